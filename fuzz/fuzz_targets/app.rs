//! `cargo xtask fuzz --target app`: see `agentcage::fuzzing::app`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentcage::fuzzing::app(data));
