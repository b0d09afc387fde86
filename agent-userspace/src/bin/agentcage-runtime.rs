//! agentcage-runtime: the OCI runtime container engines call instead of runc or crun; it
//! cages containers that name an agent and hands everything to the real runtime.

fn main() {
    std::process::exit(agentcage::oci::main(std::env::args_os().skip(1).collect()));
}
