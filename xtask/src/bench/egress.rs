//! `cargo xtask bench egress`: what caging costs a connect().
//!
//! Three variants run the same workload, `xtask __connect-loop` (N connect()+close() pairs to
//! a loopback listener, timed by the process itself with a monotonic clock):
//! - (a) uncaged;
//! - (b) caged by agentcaged, whose policy allows 100 destinations (the matching one last);
//! - (c) in a plain cgroup filtered by nftables (`socket cgroupv2` + a 100-entry interval set).
//!
//! The loop closes with SO_LINGER 0 (a RST), so that no TIME_WAIT sockets pile up and exhaust
//! the ephemeral ports over the hundreds of thousands of connects of a bench.
//!
//! Runs are interleaved round by round (a, b, c, a, b, c, ...) so that drift in the machine's
//! speed hits every variant alike, and each variant's median is reported.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use super::common::{
    cgroup2_mount, make_dir, measure, median, mount_points, Daemon, WorkDir, AGENT,
};
use crate::setup::run_setup;
use crate::util::{capture, cmd, describe, output, require_root, run};

/// The cgroup agentcaged makes its cages under, apart from any real one.
const DAEMON_CGROUP: &str = "agentcage-bench";
/// The cgroup (directly under the cgroup2 root) that variant (c) filters.
const NFT_CGROUP: &str = "agentcage-bench-nft";
const NFT_TABLE: &str = "agentcage_bench";
/// Where nft looks up `socket cgroupv2` paths, whatever the cgroup2 mount is.
const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Allow-list entries on both sides: RULES - 1 that never match, then the listener.
const RULES: usize = 100;
const TARGET_B_OVER_A: f64 = 1.05;
const TARGET_B_OVER_C: f64 = 1.0;
/// For the filter checks: a dropped SYN would otherwise wait for TCP's retries.
const PROBE_TIMEOUT_MS: u64 = 500;
/// The loopback address that no variant's rules allow; a listener waits there too, so that a
/// failed connect means filtered, not refused.
pub(super) const DENIED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LISTEN_BACKLOG: libc::c_int = 4096;

#[derive(Args)]
pub struct EgressArgs {
    /// connect()+close() pairs per run.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Rounds; each runs every variant once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Variants to run, as letters: a = uncaged, b = caged by agentcaged, c = nftables.
    #[arg(long, default_value = "abc")]
    variants: String,
}

#[derive(Args)]
pub struct ConnectLoopArgs {
    /// The listener to connect to.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    iterations: u32,
    /// A cgroup v2 directory to move into first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Close with SO_LINGER 0 (a RST) instead of a FIN, leaving no TIME_WAIT socket.
    #[arg(long)]
    abort: bool,
    /// Ask the cage's resolver for this name first (`bench dns`: the grant is per cage).
    #[arg(long)]
    resolve_first: Option<String>,
    /// Alternate with connects to this listener, each timed apart: prints two figures, the
    /// second for this one. Both cases then see the same machine, whose speed drifts.
    #[arg(long)]
    versus: Option<SocketAddr>,
}

#[derive(Args)]
pub struct ConnectProbeArgs {
    #[arg(long)]
    addr: SocketAddr,
    /// A cgroup v2 directory to move into first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[arg(long, default_value_t = PROBE_TIMEOUT_MS)]
    timeout_ms: u64,
}

/// `xtask __connect-loop`: prints ns per connect()+close() and nothing else.
pub fn connect_loop(args: &ConnectLoopArgs) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    if let Some(dir) = &args.cgroup {
        join_cgroup(dir)?;
    }
    if let Some(name) = &args.resolve_first {
        super::dns::resolve_first(name)?;
    }
    let once = |addr: SocketAddr, i: u32| -> Result<()> {
        let stream =
            TcpStream::connect(addr).with_context(|| format!("connect #{i} to {addr} failed"))?;
        if args.abort {
            set_linger_zero(&stream)?;
        }
        // Dropping the stream closes it.
        Ok(())
    };
    let n = f64::from(args.iterations);
    let Some(versus) = args.versus else {
        let start = Instant::now();
        for i in 0..args.iterations {
            once(args.addr, i)?;
        }
        println!("{:.1}", start.elapsed().as_nanos() as f64 / n);
        return Ok(());
    };
    let (mut mine, mut theirs) = (Duration::ZERO, Duration::ZERO);
    for i in 0..args.iterations {
        // Which goes first alternates too.
        for (addr, total) in if i % 2 == 0 {
            [(args.addr, &mut mine), (versus, &mut theirs)]
        } else {
            [(versus, &mut theirs), (args.addr, &mut mine)]
        } {
            let start = Instant::now();
            once(addr, i)?;
            *total += start.elapsed();
        }
    }
    println!(
        "{:.1} {:.1}",
        mine.as_nanos() as f64 / n,
        theirs.as_nanos() as f64 / n
    );
    Ok(())
}

/// `xtask __connect-probe`: prints `connected` or `failed: <error>`; either is a success, as
/// only the caller knows which it expected.
pub fn connect_probe(args: &ConnectProbeArgs) -> Result<()> {
    if let Some(dir) = &args.cgroup {
        join_cgroup(dir)?;
    }
    match TcpStream::connect_timeout(&args.addr, Duration::from_millis(args.timeout_ms)) {
        Ok(_) => println!("connected"),
        Err(e) => println!("failed: {e}"),
    }
    Ok(())
}

/// Makes close() send a RST and free the socket at once, without TIME_WAIT.
fn set_linger_zero(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket `stream` owns, and a pointer to a live linger of the given size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
    }
    Ok(())
}

fn join_cgroup(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("moving into {}", procs.display()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Uncaged,
    Caged,
    Nft,
}

impl Variant {
    fn letter(self) -> char {
        match self {
            Self::Uncaged => 'a',
            Self::Caged => 'b',
            Self::Nft => 'c',
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Uncaged => "uncaged",
            Self::Caged => "caged by agentcaged",
            Self::Nft => "nftables cgroupv2 + set",
        }
    }
}

fn parse_variants(s: &str) -> Result<Vec<Variant>> {
    let mut out = Vec::new();
    for ch in s.chars() {
        let v = match ch {
            'a' => Variant::Uncaged,
            'b' => Variant::Caged,
            'c' => Variant::Nft,
            _ => bail!("--variants takes letters from \"abc\", not {ch:?}"),
        };
        if !out.contains(&v) {
            out.push(v);
        }
    }
    ensure!(!out.is_empty(), "--variants is empty");
    Ok(out)
}

pub fn bench_egress(args: &EgressArgs) -> Result<()> {
    require_root("`cargo xtask bench egress`")?;
    ensure!(
        args.iterations > 0 && args.rounds > 0,
        "--iterations and --rounds must be at least 1"
    );
    let variants = parse_variants(&args.variants)?;
    run_setup()?;

    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let port = start_listeners()?;
    let allowed = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let denied = SocketAddr::V4(SocketAddrV4::new(DENIED_IP, port));
    let bench = Bench {
        exe,
        allowed,
        denied,
    };
    // Unfiltered, both must connect; otherwise a failure below would prove nothing.
    for addr in [allowed, denied] {
        ensure!(
            bench.probe(&mut bench.uncaged(&bench.probe_argv(addr, None)))?,
            "the benchmark's own listener at {addr} is unreachable"
        );
    }

    // Declared before the guards below, so it is removed after they have finished with it.
    let work = WorkDir::new()?;
    let daemon = if variants.contains(&Variant::Caged) {
        let d = Daemon::start_with_policy(&work.0, &policy_yaml(port), DAEMON_CGROUP)?;
        bench.check_filter("b", |argv| d.run_cmd(argv), None)?;
        Some(d)
    } else {
        None
    };
    let nft = if variants.contains(&Variant::Nft) {
        let n = NftCgroup::new(&work.0, port)?;
        let _table = n.load()?;
        bench.check_filter("c", |argv| bench.uncaged(argv), Some(&n.dir))?;
        Some(n)
    } else {
        None
    };

    let run_one = |v: Variant, iterations: u32| -> Result<f64> {
        match v {
            Variant::Uncaged => {
                bench.measure(&mut bench.uncaged(&bench.loop_argv(iterations, None)))
            }
            Variant::Caged => {
                let d = daemon.as_ref().expect("daemon started for variant b");
                bench.measure(&mut d.run_cmd(&bench.loop_argv(iterations, None)))
            }
            Variant::Nft => {
                let n = nft.as_ref().expect("nft cgroup made for variant c");
                // Loaded for this run only: its output chain sees every packet on the host, so
                // leaving it in place would tax the other variants too.
                let _table = n.load()?;
                bench.measure(&mut bench.uncaged(&bench.loop_argv(iterations, Some(&n.dir))))
            }
        }
    };

    // One short unrecorded run each: first-run costs (page cache, the daemon's first cage) are
    // not what is measured.
    for &v in &variants {
        run_one(v, (args.iterations / 10).max(100))
            .with_context(|| format!("warm-up run of ({}) {}", v.letter(), v.label()))?;
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=args.rounds {
        for (i, &v) in variants.iter().enumerate() {
            let ns = run_one(v, args.iterations)
                .with_context(|| format!("round {round}: ({}) {}", v.letter(), v.label()))?;
            eprintln!(
                "round {round}/{}: ({}) {:<24} {ns:>10.0} ns/op",
                args.rounds,
                v.letter(),
                v.label()
            );
            samples[i].push(ns);
        }
    }

    println!(
        "bench egress: {} connect()+close(RST) to {allowed} per run, {} rounds interleaved, \
         median ns/op",
        args.iterations, args.rounds
    );
    if variants.contains(&Variant::Caged) {
        println!("  (agentcaged runs throughout, during the other variants' runs too)");
    }
    if variants.contains(&Variant::Nft) {
        println!("  (the nft table is loaded for (c)'s runs only)");
    }
    let mut medians = Vec::new();
    for (&v, s) in variants.iter().zip(&samples) {
        let m = median(s);
        let mut runs = String::new();
        for x in s {
            let _ = write!(runs, " {x:.0}");
        }
        println!(
            "  ({}) {:<24} {m:>10.0} ns/op   (runs:{runs})",
            v.letter(),
            v.label()
        );
        medians.push((v, m));
    }
    let get = |v: Variant| medians.iter().find(|(w, _)| *w == v).map(|&(_, m)| m);
    if let Some(b) = get(Variant::Caged) {
        for (other, target) in [
            (Variant::Uncaged, TARGET_B_OVER_A),
            (Variant::Nft, TARGET_B_OVER_C),
        ] {
            if let Some(o) = get(other) {
                let ratio = b / o;
                println!(
                    "  b/{} = {ratio:.3}   target <= {target:.2}: {}",
                    other.letter(),
                    if ratio <= target { "met" } else { "NOT met" }
                );
            }
        }
    }
    Ok(())
}

/// What every variant shares: the workload binary and the two addresses.
struct Bench {
    exe: PathBuf,
    allowed: SocketAddr,
    denied: SocketAddr,
}

impl Bench {
    fn loop_argv(&self, iterations: u32, cgroup: Option<&Path>) -> Vec<String> {
        let mut argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "__connect-loop".into(),
            "--addr".into(),
            self.allowed.to_string(),
            "--iterations".into(),
            iterations.to_string(),
            // A FIN close leaves a TIME_WAIT socket for 60 s; some 100,000 connects fill the
            // ~28,000 ephemeral ports with them, and connect() then spends a varying, often
            // huge, time searching for a port (runs of 30 us/op and 140 us/op alternated).
            "--abort".into(),
        ];
        if let Some(dir) = cgroup {
            argv.extend(["--cgroup".into(), dir.to_string_lossy().into_owned()]);
        }
        argv
    }

    fn probe_argv(&self, addr: SocketAddr, cgroup: Option<&Path>) -> Vec<String> {
        let mut argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "__connect-probe".into(),
            "--addr".into(),
            addr.to_string(),
        ];
        if let Some(dir) = cgroup {
            argv.extend(["--cgroup".into(), dir.to_string_lossy().into_owned()]);
        }
        argv
    }

    fn uncaged(&self, argv: &[String]) -> Command {
        let mut c = cmd(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// Runs a loop and reads its figure.
    fn measure(&self, c: &mut Command) -> Result<f64> {
        measure(c)
    }

    /// Runs a probe: whether it connected.
    fn probe(&self, c: &mut Command) -> Result<bool> {
        let out = output(c)?;
        if out.lines().any(|l| l.trim() == "connected") {
            Ok(true)
        } else if out.lines().any(|l| l.starts_with("failed:")) {
            Ok(false)
        } else {
            bail!("`{}` printed no probe result: {out:?}", describe(c))
        }
    }

    /// Proves a variant filters before it is measured: the listener's address connects, the
    /// other loopback address (where a listener also waits) does not.
    fn check_filter(
        &self,
        name: &str,
        wrap: impl Fn(&[String]) -> Command,
        cgroup: Option<&Path>,
    ) -> Result<()> {
        ensure!(
            self.probe(&mut wrap(&self.probe_argv(self.allowed, cgroup)))?,
            "variant ({name}): a connect to the allowed {} failed",
            self.allowed
        );
        ensure!(
            !self.probe(&mut wrap(&self.probe_argv(self.denied, cgroup)))?,
            "variant ({name}) does not filter: a connect to {} (not allowed) succeeded",
            self.denied
        );
        eprintln!(
            "variant ({name}) filters: {} connects, {} does not",
            self.allowed, self.denied
        );
        Ok(())
    }
}

/// Listeners on 127.0.0.1:PORT and 127.0.0.2:PORT that accept and close, on threads that live
/// as long as the process. Returns PORT.
pub(super) fn start_listeners() -> Result<u16> {
    let mut last_err = None;
    // The kernel picks a port free on 127.0.0.1; it may be taken on 127.0.0.2, so retry.
    for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        match TcpListener::bind((DENIED_IP, port)) {
            Ok(second) => {
                for l in [first, second] {
                    // std listens with a backlog of 128, which a tight connect loop overruns
                    // whenever this thread is not scheduled in time; each overflow costs the
                    // client a 1 s SYN retransmit, ruining the figure. listen() again raises it
                    // (the kernel caps it at net.core.somaxconn).
                    // SAFETY: a valid listening socket that `l` owns.
                    if unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .context("raising the listener's backlog");
                    }
                    std::thread::spawn(move || {
                        for conn in l.incoming() {
                            drop(conn);
                        }
                    });
                }
                return Ok(port);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("tried at least once")).context("binding a second listener on 127.0.0.2")
}

/// The allow-list shared by the policy and the nft set: RULES - 1 loopback /32s that the
/// workload never targets, spaced so that no two are adjacent (nft would merge neighbours into
/// one interval), then the listener's 127.0.0.1.
fn allow_list() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = (0..RULES - 1)
        .map(|i| Ipv4Addr::new(127, 1, u8::try_from(i).expect("RULES <= 256"), 1))
        .collect();
    v.push(Ipv4Addr::LOCALHOST);
    v
}

fn policy_yaml(port: u16) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `cargo xtask bench egress`: {} rules that never match, then the listener.",
        RULES - 1
    );
    s.push_str("version: 1\nagents:\n");
    let _ = writeln!(s, "  {AGENT}:");
    s.push_str("    egress:\n      allow_events: none\n      allow:\n");
    for ip in allow_list() {
        let _ = writeln!(
            s,
            "        - {{ cidr: {ip}/32, ports: [{port}], protocols: [tcp] }}"
        );
    }
    s
}

fn nft_ruleset(port: u16) -> String {
    let elements: Vec<String> = allow_list().iter().map(|ip| format!("{ip}/32")).collect();
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tset allowed {{\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         \t\telements = {{ {} }}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\tsocket cgroupv2 level 1 \"{NFT_CGROUP}\" ip daddr @allowed tcp dport {port} accept\n\
         \t\tsocket cgroupv2 level 1 \"{NFT_CGROUP}\" drop\n\
         \t}}\n\
         }}\n",
        elements.join(", ")
    )
}

/// Variant (c)'s cgroup, and on a hybrid host its bind mount under /sys/fs/cgroup; both
/// removed on drop.
struct NftCgroup {
    dir: PathBuf,
    ruleset: PathBuf,
    /// The bind mount's target, once made (it is only needed when cgroup2 is elsewhere).
    bind: Option<PathBuf>,
}

impl NftCgroup {
    fn new(work: &Path, port: u16) -> Result<Self> {
        // Leftovers of an interrupted run would make the steps below fail.
        let _ = capture(cmd("nft").args(["delete", "table", "ip", NFT_TABLE]));
        let root = cgroup2_mount()?;
        let dir = root.join(NFT_CGROUP);
        make_dir(&dir)?;
        let ruleset = work.join("bench.nft");
        fs::write(&ruleset, nft_ruleset(port))
            .with_context(|| format!("writing {}", ruleset.display()))?;
        let mut me = Self {
            dir,
            ruleset,
            bind: None,
        };
        if root != Path::new(NFT_CGROUP_ROOT) {
            // nft resolves `socket cgroupv2` paths under /sys/fs/cgroup only; a bind mount of
            // the cgroup there gives it the same inode, i.e. the same cgroup id.
            let target = Path::new(NFT_CGROUP_ROOT).join(NFT_CGROUP);
            if mount_points()?.contains(&target) {
                run(cmd("umount").arg(&target))?;
            }
            make_dir(&target)?;
            run(cmd("mount").arg("--bind").arg(&me.dir).arg(&target))?;
            me.bind = Some(target);
        }
        Ok(me)
    }

    fn load(&self) -> Result<NftTable> {
        output(cmd("nft").arg("-f").arg(&self.ruleset))?;
        Ok(NftTable)
    }
}

impl Drop for NftCgroup {
    fn drop(&mut self) {
        if let Some(target) = &self.bind {
            if let Err(e) = output(cmd("umount").arg(target)) {
                eprintln!("cleanup: {e:#}");
            }
            if let Err(e) = fs::remove_dir(target) {
                eprintln!("cleanup: removing {}: {e}", target.display());
            }
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
    }
}

/// The loaded nft table; deleted on drop.
struct NftTable;

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(e) = output(cmd("nft").args(["delete", "table", "ip", NFT_TABLE])) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_the_listener_last_and_no_neighbours() {
        let v = allow_list();
        assert_eq!(v.len(), RULES);
        assert_eq!(v.last(), Some(&Ipv4Addr::LOCALHOST));
        assert!(!v.contains(&DENIED_IP));
    }

    #[test]
    fn policy_lists_every_rule_once() {
        let p = policy_yaml(4242);
        assert_eq!(p.matches("- { cidr: ").count(), RULES);
        assert!(p.contains("- { cidr: 127.0.0.1/32, ports: [4242], protocols: [tcp] }\n"));
        assert!(p.ends_with("protocols: [tcp] }\n"));
    }
}
