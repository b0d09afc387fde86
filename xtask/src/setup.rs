//! `cargo xtask setup`: installs what a fresh machine lacks. Idempotent: every step first
//! checks whether its work is already done, and says which it was.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::util::{self, capture, cmd, output, run, tools_dir};

/// Debian packages the build, the tests and the benchmarks need. One list, so that a new need
/// is one line here.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // The restart test counts the programs attached to a cgroup with it.
    "bpftool",
    // The nftables baseline of `cargo xtask bench egress`.
    "nftables",
    "iproute2",
    "curl",
    "procps",
    // mount/umount for the benchmark's cgroup bind mount.
    "util-linux",
    // The auditd baseline of `cargo xtask bench capture`.
    "auditd",
    // `cargo xtask vm-test`: the emulator, the VM's shell and tools, and the initramfs
    // archiver.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // Rotel, the OpenTelemetry collector of the telemetry tests, links libpython3.11 and
    // installs from PyPI with pip.
    "libpython3.11",
    "python3-pip",
    // The dashboard test renders the page in headless Chromium.
    "chromium",
    // The terminal tests: a real terminal to type into and read (tmux), and a full-screen
    // program to run in the agent's terminal.
    "tmux",
    "less",
    // The container tests: a real engine (dockerd with its containerd) and the runtime
    // agentcage-runtime hands over to. The tests run their own dockerd on their own roots.
    "docker.io",
    "runc",
];

/// The Rotel release the telemetry tests send to (a Rust OTLP collector shipped on PyPI).
const ROTEL_VERSION: &str = "0.0.1a15";

/// The asciinema release whose `cat` the terminal tests check recordings with (the last
/// Python one, dependency-free).
const ASCIINEMA_VERSION: &str = "2.4.0";

/// The PyJWT and cryptography releases the credential tests verify tokens with: a JWT library
/// in another language, as a tool's backend would use it.
const PYJWT: &[&str] = &["pyjwt==2.15.1", "cryptography==50.0.2"];

/// The bpf-linker release that links our eBPF crate (the newest that builds with the pinned
/// nightly; see docs/KERNEL.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run_setup() -> Result<()> {
    debian_packages().context("setup: Debian packages")?;
    toolchain()?;
    crate::vm::kernel::fetch_kernels().context("setup: the VM kernels")?;
    rotel().context("setup: Rotel (OpenTelemetry collector for the tests)")?;
    asciinema().context("setup: asciinema (reads the terminal tests' recordings)")?;
    pyjwt().context("setup: PyJWT (verifies the credential tests' tokens)")?;
    Ok(())
}

/// What building needs beyond rustup's stable and nightly, and installs as any user: rust-src
/// for the nightly (the eBPF crate builds `core` itself) and bpf-linker in `.tools/`.
pub fn toolchain() -> Result<()> {
    rust_src().context("setup: rust-src for the nightly toolchain")?;
    bpf_linker().context("setup: bpf-linker")
}

/// Installs Rotel into `.tools/rotel`.
fn rotel() -> Result<()> {
    pip_into_tools(
        "Rotel",
        "rotel",
        &[&format!("rotel=={ROTEL_VERSION}")],
        false,
        Path::new("rotel/rotel-agent"),
    )
}

/// Installs asciinema (Python, no dependencies) into `.tools/asciinema`; the terminal tests
/// run `python3 -m asciinema cat` with that directory on PYTHONPATH.
fn asciinema() -> Result<()> {
    pip_into_tools(
        "asciinema",
        "asciinema",
        &[&format!("asciinema=={ASCIINEMA_VERSION}")],
        false,
        Path::new("asciinema/__main__.py"),
    )
}

/// Installs PyJWT with cryptography (and their dependencies) into `.tools/pyjwt`; the
/// credential tests run `python3 -S` (no site-packages) with that directory on PYTHONPATH.
fn pyjwt() -> Result<()> {
    pip_into_tools("PyJWT", "pyjwt", PYJWT, true, Path::new("jwt/__init__.py"))
}

/// Installs the pinned PyPI `requirements` into `.tools/DIR` with pip (`--target`: nothing
/// of the system's Python changes), with their dependencies when `deps`; `marker`, relative
/// to that directory, proves it is there. The pins are recorded beside it, so a pinned
/// upgrade reinstalls.
fn pip_into_tools(
    name: &str,
    dir: &str,
    requirements: &[&str],
    deps: bool,
    marker: &Path,
) -> Result<()> {
    let dir = tools_dir().join(dir);
    let marker = dir.join(marker);
    let stamp = dir.join(".agentcage-version");
    let version = requirements.join(" ");
    // Stamps written before several requirements were possible hold the bare version.
    let stamped = fs::read_to_string(&stamp).ok().map(|s| {
        if s.contains("==") {
            s
        } else {
            format!(
                "{}=={s}",
                requirements[0].split("==").next().unwrap_or_default()
            )
        }
    });
    if marker.exists() && stamped.as_deref() == Some(version.as_str()) {
        println!("setup: {name} {version} already in {}", dir.display());
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let mut pip = cmd("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&dir);
    if !deps {
        pip.arg("--no-deps");
    }
    run(pip
        .args(requirements)
        // Debian's pip refuses installs outside a venv unless told; --target touches only
        // our directory.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"))?;
    if !marker.exists() {
        bail!(
            "pip installed {version} but {} is missing",
            marker.display()
        );
    }
    fs::write(&stamp, &version).with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup: installed {name} {version} into {}", dir.display());
    Ok(())
}

fn debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in DEBIAN_PACKAGES {
        // Exit status 1 with "no packages found" for a package dpkg never saw: that is just
        // "missing", so look at the status text rather than the exit code.
        let out = capture(cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]))?;
        let status = String::from_utf8_lossy(&out.stdout);
        if !(out.status.success() && status.trim().ends_with(" installed")) {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        println!(
            "setup: Debian packages already installed ({})",
            DEBIAN_PACKAGES.join(", ")
        );
        return Ok(());
    }
    let uid = util::euid();
    if uid != 0 {
        bail!(
            "missing Debian packages {}; installing them needs root (this is uid {uid})",
            missing.join(", ")
        );
    }
    // Only now: an update costs time and needs the network, and a ready machine needs neither.
    run(cmd("apt-get").arg("update"))?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    println!("setup: installed Debian packages {}", missing.join(", "));
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed =
        output(cmd("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("is the nightly toolchain installed? (`rustup toolchain list`)")?;
    // Listed as plain `rust-src` (it has no target suffix).
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
    {
        println!("setup: rust-src (nightly) already installed");
        return Ok(());
    }
    run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    println!("setup: installed rust-src (nightly)");
    Ok(())
}

/// The version `bin --version` reports, if it runs at all (it does not when the libLLVM it
/// was linked against has gone, e.g. after a nightly update).
fn bpf_linker_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

fn bpf_linker() -> Result<()> {
    let tools = tools_dir();
    let bin = tools.join("bin").join("bpf-linker");
    if bpf_linker_version(&bin).as_deref() == Some(BPF_LINKER_VERSION) {
        println!(
            "setup: bpf-linker {BPF_LINKER_VERSION} already in {}",
            bin.display()
        );
        return Ok(());
    }

    // bpf-linker must use the same LLVM as the nightly rustc that emits the bitcode, and that
    // LLVM ships only as the toolchain's own libLLVM.so.<version>-rust-<rustc version>.
    let sysroot = output(cmd("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut libs: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    libs.sort();
    let Some(lib_name) = libs.pop() else {
        bail!(
            "no libLLVM.so.* in {}: the nightly toolchain ships no LLVM library to link against",
            lib_dir.display()
        );
    };
    let lib = lib_dir.join(&lib_name);

    let version = output(cmd("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .with_context(|| {
            format!("no \"LLVM version:\" line in `rustc +nightly -vV`:\n{version}")
        })?;

    // An LLVM_PREFIX whose lib/ holds just this library under both names bpf-linker's build
    // looks for. The binary's rpath points here too.
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", lib_name.as_str()] {
        let link = prefix_lib.join(name);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
        }
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), lib.display()))?;
    }
    // A binary that only lost its links (e.g. a .tools copied without them) runs again now,
    // which saves a two-minute rebuild.
    if bpf_linker_version(&bin).as_deref() == Some(BPF_LINKER_VERSION) {
        println!(
            "setup: bpf-linker {BPF_LINKER_VERSION} in {} runs again after relinking {lib_name}",
            bin.display()
        );
        return Ok(());
    }

    // --force: a binary that no longer runs is still recorded as installed, and cargo would
    // otherwise skip it.
    run(util::cargo()
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .arg("--force")
        .arg("--root")
        .arg(&tools))?;

    match bpf_linker_version(&bin) {
        Some(v) if v == BPF_LINKER_VERSION => {}
        other => bail!(
            "{} was built but `--version` reports {other:?}, not {BPF_LINKER_VERSION}",
            bin.display()
        ),
    }
    println!(
        "setup: built bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm_major}, {lib_name}) into {}",
        bin.display()
    );
    Ok(())
}
