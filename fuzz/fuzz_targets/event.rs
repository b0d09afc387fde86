//! `cargo xtask fuzz --target event`: see `agentcage::fuzzing::event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentcage::fuzzing::event(data));
