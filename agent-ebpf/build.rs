//! Rebuild the eBPF objects when the linker changes (it is part of the toolchain here).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
