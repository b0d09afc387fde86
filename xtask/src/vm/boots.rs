//! The boots of `cargo xtask vm-test`: each kernel with and without BPF LSM, the steps run
//! before the tests, which suites run where, and what each boot must refuse.

use super::kernel::{Kernel, KERNELS};

/// The enforcement tier a boot must give (checked in the VM: `bpf` among the active LSMs
/// exactly in the deny tier, and by the tests through AGENTCAGE_EXPECT_TIER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Deny,
    Kill,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Kill => "kill",
        }
    }
}

/// A command run in the VM before the tests, its output kept in `.vm/output/` (the doctor
/// table of docs/KERNEL.md is what these showed).
#[derive(Debug)]
pub struct Step {
    /// Its name, in the markers and the output file.
    pub name: &'static str,
    /// Arguments of the `agentcage` CLI.
    pub args: &'static [&'static str],
    /// Whether `agentcaged` runs meanwhile (started on a policy with no agents).
    pub daemon: bool,
}

/// `agentcage doctor` beside a running daemon: the kernel's probes, the tier, every hook's
/// state and what is refused. In JSON: the boots' reports become docs/KERNEL.md's table
/// (`.vm/output/doctor-table.md`).
pub const DOCTOR: Step = Step {
    name: "doctor",
    args: &["doctor", "-o", "json"],
    daemon: true,
};

/// `agentcage selftest`: its own throwaway daemon and cage, every way out of the catalogue
/// tried; it exits 1 if anything got out. The timeout is its daemon's start, which takes
/// minutes under emulation on a loaded machine.
pub const SELFTEST: Step = Step {
    name: "selftest",
    args: &["selftest", "--timeout", "600"],
    daemon: false,
};

/// The steps of every boot, in order; each must exit 0.
pub const STEPS: &[Step] = &[DOCTOR, SELFTEST];

/// One boot of a VM kernel and what it must show.
#[derive(Debug)]
pub struct Boot {
    pub kernel: &'static Kernel,
    /// The tier it must give; with the kernel, its name: `5.10/deny`.
    pub tier: Tier,
    /// The kernel's `lsm=`, or None for the kernel's default list.
    pub lsm: Option<&'static str>,
    /// Policy features the daemon must refuse here (AGENTCAGE_EXPECT_REFUSED): those that
    /// need BPF LSM in the kill tier; in the deny tier those the kernel lacks a hook or helper for.
    pub refused: &'static [&'static str],
    /// Steps run before the tests.
    pub steps: &'static [Step],
    /// Test targets (`[[test]]` names), run in this order. A name the build lacks is an error.
    pub tests: &'static [&'static str],
    /// Tests left out of this boot (`--skip NAME`), with why, in lists.
    pub skip: &'static [&'static [(&'static str, &'static str)]],
}

impl Boot {
    /// `KERNEL/TIER`, in `--boot`, on the kernel command line and in `vm(NAME): ...`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.kernel.name, self.tier.name())
    }
}

/// What the kill tier refuses: every policy feature that needs BPF LSM. Exec rules by
/// content hold there too, judged by the daemon's exec watch (fanotify permission events,
/// which every Debian kernel has).
pub(super) const KILL_REFUSED: &[&str] = &["deny_enforcement", "file_rules"];

/// And before Linux 6.7, which has no cgroup Unix socket hooks, Unix sockets too.
pub(super) const KILL_REFUSED_BEFORE_6_7: &[&str] =
    &["deny_enforcement", "file_rules", "unix_sockets"];

/// What every boot runs: egress, inbound connections and Unix sockets (each judged by the
/// tier's own hooks, or refused where the kernel has none), capture, what the kernel is
/// refused, and the tier's own suite (each boot's `agentcage selftest` step comes first).
/// Under TCG each deny-tier daemon start verifies the LSM programs (most of a minute on a
/// busy machine), so the suites that do not depend on the tier or the kernel run once, in
/// Debian 12's boots; the host runs them all.
const DENY_TESTS: &[&str] = &[
    "egress",
    "ingress",
    "unix",
    "capture",
    "kernel",
    "deny_tier",
];
const KILL_TESTS: &[&str] = &[
    "egress",
    "ingress",
    "unix",
    "capture",
    "kernel",
    "kill_tier",
];
/// Debian 12 (6.1), the reference kernel, deny tier: also the LSM's agreement with the
/// resolver.
const FULL_DENY_TESTS: &[&str] = &[
    "egress",
    "ingress",
    "unix",
    "capture",
    "dns",
    "kernel",
    "deny_tier",
];
/// Debian 12's kill tier: also accounts and limits (the VM's unified hierarchy has the
/// controllers the host lacks). The resolver's kill-tier path, bounded inputs and the
/// self-test's suite run on the host (the boot's selftest step runs the catalogue here).
const FULL_KILL_TESTS: &[&str] = &[
    "egress",
    "ingress",
    "unix",
    "capture",
    "kernel",
    "kill_tier",
    "accounts",
];

/// Why the deny boots leave out egress tests of address matching alone.
const CGROUP_ONLY: &str = "decided by the cgroup programs and maps alone, the same in both \
    tiers: this kernel's kill boot runs it (a daemon start fewer under emulation)";

/// Those tests: CIDR edges, longest prefixes, IPv6 and mapped IPv4 rules, event filtering,
/// the raw-socket policy and inheritance by children. What the deny tier adds to egress
/// (the LSM on sockets made outside the cage, and its agreement on every allowed connect)
/// the deny boots still test: the rest of `egress`, `ingress`, `unix`, `deny_tier`, `dns`.
const DENY_SKIP: &[(&str, &str)] = &[
    ("cidr_edges_are_exact", CGROUP_ONLY),
    ("longest_prefix_match_still_sees_broader_rules", CGROUP_ONLY),
    ("ipv6_rules_apply_to_ipv6_destinations", CGROUP_ONLY),
    ("ipv4_mapped_ipv6_is_judged_as_ipv4", CGROUP_ONLY),
    ("allow_events_none_reports_denials_only", CGROUP_ONLY),
    ("raw_sockets_can_be_allowed_by_policy", CGROUP_ONLY),
    ("children_are_caged_and_outsiders_are_not", CGROUP_ONLY),
];

/// Left out of 5.10's deny boot: tests of `files` rules, which 5.10 refuses (no
/// `userns_create` hook); `kernel::refusals_name_what_this_kernel_lacks` checks that.
const FILES_REFUSED: &[(&str, &str)] = &[
    (
        "protected_files_cannot_be_opened_even_through_a_symlink",
        "files rules are refused on 5.10 (no userns_create hook)",
    ),
    (
        "protected_places_cannot_be_escaped_or_changed_by_other_calls",
        "files rules are refused on 5.10 (no userns_create hook)",
    ),
    (
        "file_rules_that_arrive_with_a_reload_hold_from_the_first_cage",
        "files rules are refused on 5.10 (no userns_create hook)",
    ),
];

impl Boot {
    /// A boot with BPF LSM active that enforces every policy feature.
    const fn deny(kernel: &'static Kernel, lsm: Option<&'static str>) -> Self {
        Self {
            kernel,
            tier: Tier::Deny,
            lsm,
            refused: &[],
            steps: STEPS,
            tests: DENY_TESTS,
            skip: &[DENY_SKIP],
        }
    }

    /// A boot without BPF LSM: every policy feature that needs it is refused.
    const fn kill(kernel: &'static Kernel, lsm: Option<&'static str>) -> Self {
        Self {
            tier: Tier::Kill,
            refused: KILL_REFUSED_BEFORE_6_7,
            tests: KILL_TESTS,
            skip: &[],
            ..Self::deny(kernel, lsm)
        }
    }
}

/// Which kernel boots how, and what it must show. Measured (docs/KERNEL.md): 5.10 has BPF LSM
/// built in but not in its default list, no `userns_create` hook and no `bpf_ima_file_hash`;
/// 6.1 and 6.12 have BPF LSM active by default and everything the deny tier uses. A kill
/// boot's `lsm=` is the kernel's default list without `bpf`.
pub const VM_SUITES: &[Boot] = &[
    Boot {
        refused: &["file_rules", "content_rules"],
        skip: &[DENY_SKIP, FILES_REFUSED],
        // 5.10's default list lacks `bpf`: the deny boot adds it, as a Debian 11 user would.
        ..Boot::deny(
            &KERNELS[0],
            Some("lockdown,capability,yama,apparmor,tomoyo,bpf"),
        )
    },
    Boot {
        // Containment too: 5.10 has no cgroup.kill (5.14), so a kill signals each process.
        tests: &[
            "egress",
            "ingress",
            "unix",
            "capture",
            "kernel",
            "kill_tier",
            "containment",
        ],
        // The default list: no `bpf`.
        ..Boot::kill(&KERNELS[0], None)
    },
    Boot {
        tests: FULL_DENY_TESTS,
        ..Boot::deny(&KERNELS[1], None)
    },
    Boot {
        tests: FULL_KILL_TESTS,
        ..Boot::kill(
            &KERNELS[1],
            Some("lockdown,capability,landlock,yama,apparmor,tomoyo"),
        )
    },
    Boot::deny(&KERNELS[2], None),
    Boot {
        refused: KILL_REFUSED,
        ..Boot::kill(
            &KERNELS[2],
            Some("lockdown,capability,landlock,yama,apparmor,tomoyo,ipe,ima,evm"),
        )
    },
];
