//! The accounts agents run under: a policy's `run_as` resolved to a uid, gid and groups
//! ([`grant`]), and the daemon's dynamic uids ([`DynamicUsers`]): one per cage from a
//! reserved range, as systemd's DynamicUser does, each with a home of its own.

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    hash::{Hash as _, Hasher as _},
    io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

use crate::policy::Account;

/// The first uid (and gid) of the dynamic range: systemd's DynamicUser range.
pub const DYNAMIC_FIRST: u32 = 61184;
/// The last uid of the dynamic range.
pub const DYNAMIC_LAST: u32 = 65519;

/// What `agentcage run` becomes before its child joins the cage, as the daemon decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAsGrant {
    /// The policy's account (`dynamic`, `root`, `caller`, a name), for messages.
    pub account: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid; None keeps the caller's.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The supplementary groups; None keeps the caller's.
    #[serde(default)]
    pub groups: Option<Vec<u32>>,
    /// HOME, when the account has one (a dynamic uid's is made by the daemon).
    #[serde(default)]
    pub home: Option<String>,
    /// The account's name, for USER and LOGNAME (a dynamic uid has none in the databases).
    #[serde(default)]
    pub name: Option<String>,
}

impl RunAsGrant {
    /// What a process joining the cage under this grant must run as: its uid and (when set)
    /// its gid, in every one of real, effective, saved and file-system ids.
    pub fn joiner(&self) -> Joiner {
        Joiner {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// The ids a joining process must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Joiner {
    /// Every uid of the process.
    pub uid: u32,
    /// Every gid of the process, when fixed.
    pub gid: Option<u32>,
}

/// Why an account cannot be granted.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// `run_as` names an account the host does not have.
    #[error("run_as of agent {agent:?} names account {name:?}, which this host does not have")]
    NoSuchAccount {
        /// The agent.
        agent: String,
        /// The account.
        name: String,
    },
    /// The account would be root without `run_as: root` saying so.
    #[error(
        "agent {agent:?} would run as root ({why}), and root must be written out: set run_as: \
         root in its policy, or choose another account with --user"
    )]
    RootNotWritten {
        /// The agent.
        agent: String,
        /// How it came to be root.
        why: String,
    },
    /// A non-root caller asked for an account other than its own.
    #[error(
        "agent {agent:?} runs as {account} (its policy's run_as), and only root can start a \
         process under another account than its own (uid {caller}): run `agentcage run` as \
         root, or give the agent run_as: caller to run it as yourself"
    )]
    NotYourAccount {
        /// The agent.
        agent: String,
        /// The account.
        account: String,
        /// The caller's uid.
        caller: u32,
    },
    /// Every uid of the dynamic range is in use.
    #[error("no free uid in {DYNAMIC_FIRST}-{DYNAMIC_LAST} for agent {0:?}: every one is an account, a running process's or another cage's")]
    Exhausted(String),
    /// The home of a dynamic uid could not be made.
    #[error("making the home {path} of agent {agent:?}: {source}")]
    Home {
        /// The agent.
        agent: String,
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The grant for `account` (the policy's choice for `agent`) to a caller of uid `caller`;
/// `dynamic` is the cage's dynamic uid, which the caller allocates for `Account::Dynamic`.
pub fn grant(
    agent: &str,
    account: &Account,
    caller: u32,
    dynamic: Option<&DynamicUser>,
) -> Result<RunAsGrant, AccountError> {
    let base = |uid| RunAsGrant {
        account: account.to_string(),
        uid,
        gid: None,
        groups: None,
        home: None,
        name: None,
    };
    let not_yours = || AccountError::NotYourAccount {
        agent: agent.to_owned(),
        account: account.to_string(),
        caller,
    };
    let grant = match (account, dynamic) {
        (Account::Dynamic, _) if caller != 0 => return Err(not_yours()),
        (Account::Dynamic, Some(d)) => RunAsGrant {
            gid: Some(d.uid),
            groups: Some(Vec::new()),
            home: Some(d.home.display().to_string()),
            name: Some(format!("agentcage-{agent}")),
            ..base(d.uid)
        },
        (Account::Dynamic, None) => return Err(AccountError::Exhausted(agent.to_owned())),
        (Account::Root, _) => base(0),
        (Account::Caller, _) if caller == 0 => {
            return Err(AccountError::RootNotWritten {
                agent: agent.to_owned(),
                why: "run_as: caller, and the caller is root".into(),
            })
        }
        (Account::Caller, _) => base(caller),
        (Account::User(name), _) => {
            let user = lookup(name).ok_or_else(|| AccountError::NoSuchAccount {
                agent: agent.to_owned(),
                name: name.clone(),
            })?;
            if user.uid.is_root() {
                return Err(AccountError::RootNotWritten {
                    agent: agent.to_owned(),
                    why: format!("account {name:?} has uid 0"),
                });
            }
            let groups = CString::new(user.name.clone())
                .ok()
                .and_then(|n| nix::unistd::getgrouplist(&n, user.gid).ok())
                .unwrap_or_else(|| vec![user.gid]);
            RunAsGrant {
                gid: Some(user.gid.as_raw()),
                groups: Some(groups.into_iter().map(Gid::as_raw).collect()),
                home: Some(user.dir.display().to_string()),
                name: Some(user.name),
                ..base(user.uid.as_raw())
            }
        }
    };
    if caller != 0 && grant.uid != caller {
        return Err(not_yours());
    }
    Ok(grant)
}

/// An account by name, or by uid when the name is a number.
fn lookup(name: &str) -> Option<User> {
    match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(name).ok().flatten(),
    }
}

/// Whether a process of uid `uid` may be adopted into a cage whose policy says `run_as`:
/// adopting keeps the process's uid, so the policy must allow that account.
pub fn adoptable(run_as: &[Account], uid: u32) -> bool {
    run_as.iter().any(|a| match a {
        Account::Caller => uid != 0,
        Account::User(name) => lookup(name).is_some_and(|u| u.uid.as_raw() == uid),
        Account::Dynamic | Account::Root => false,
    })
}

/// A cage's dynamic uid (its gid is the same number) and home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicUser {
    /// The uid and gid.
    pub uid: u32,
    /// HOME: a directory of its own, mode 0700.
    pub home: PathBuf,
}

/// Allocates and releases dynamic uids.
#[derive(Clone, Debug)]
pub struct DynamicUsers {
    home_root: PathBuf,
    /// Mixed into each agent's first candidate, so daemons side by side (tests) start apart.
    seed: String,
}

impl DynamicUsers {
    /// Homes go below `home_root` (`<home_root>/<agent>`).
    pub fn new(home_root: PathBuf, seed: &str) -> Self {
        Self {
            home_root,
            seed: seed.to_owned(),
        }
    }

    /// A free uid for `agent`, not in `taken` (the other cages' uids), not an account or a
    /// group, not held by any running process nor locked by systemd; with its home made.
    /// The search starts at a hash of the agent's name, so an agent tends to get the same
    /// uid again (and its leftover files are not another agent's to read).
    pub fn allocate(&self, agent: &str, taken: &HashSet<u32>) -> Result<DynamicUser, AccountError> {
        let running = ids_of_processes();
        let span = DYNAMIC_LAST - DYNAMIC_FIRST + 1;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.seed, agent).hash(&mut h);
        let start = (h.finish() % u64::from(span)) as u32;
        let uid = (0..span)
            .map(|i| DYNAMIC_FIRST + (start + i) % span)
            .find(|&uid| !taken.contains(&uid) && !running.contains(&uid) && unclaimed(uid))
            .ok_or_else(|| AccountError::Exhausted(agent.to_owned()))?;
        let home = self.make_home(agent, uid)?;
        Ok(DynamicUser { uid, home })
    }

    /// The dynamic uid a cage's processes hold, for a cage an earlier daemon left: `pids`'
    /// uids, when all are one uid of the range.
    pub fn of_processes(&self, agent: &str, pids: &[u32]) -> Option<DynamicUser> {
        let uids: HashSet<u32> = pids.iter().filter_map(|p| real_uid(*p)).collect();
        let uid = match uids.into_iter().collect::<Vec<_>>().as_slice() {
            [uid] if (DYNAMIC_FIRST..=DYNAMIC_LAST).contains(uid) => *uid,
            _ => return None,
        };
        let home = self.make_home(agent, uid).ok()?;
        Some(DynamicUser { uid, home })
    }

    /// Gives the uid back: its home goes (renamed at once, removed on a thread of its own,
    /// since an agent's home can be large), so whoever gets the uid next finds nothing there.
    pub fn release(&self, agent: &str, user: &DynamicUser) {
        let gone = self.home_root.join(format!(
            ".released-{agent}-{}-{}",
            user.uid,
            std::process::id()
        ));
        if fs::rename(&user.home, &gone).is_ok() {
            std::thread::spawn(move || {
                if let Err(e) = fs::remove_dir_all(&gone) {
                    tracing::warn!(home = %gone.display(), error = %e, "released home not removed");
                }
            });
        }
    }

    /// `<home_root>/<agent>`, owned by `uid`, mode 0700; an earlier one of another owner is
    /// replaced.
    fn make_home(&self, agent: &str, uid: u32) -> Result<PathBuf, AccountError> {
        let path = self.home_root.join(agent);
        let err = |source| AccountError::Home {
            agent: agent.to_owned(),
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.home_root).map_err(err)?;
        // Others must be able to pass through to their own home.
        fs::set_permissions(&self.home_root, fs::Permissions::from_mode(0o711)).map_err(err)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == uid => return Ok(path),
            Ok(_) => self.release(
                agent,
                &DynamicUser {
                    uid,
                    home: path.clone(),
                },
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        fs::create_dir(&path).map_err(err)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(err)?;
        nix::unistd::chown(&path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
            .map_err(|e| err(e.into()))?;
        Ok(path)
    }
}

/// Whether no account, group or systemd dynamic user claims `uid`.
fn unclaimed(uid: u32) -> bool {
    matches!(User::from_uid(Uid::from_raw(uid)), Ok(None))
        && matches!(Group::from_gid(Gid::from_raw(uid)), Ok(None))
        && !Path::new(&format!("/run/systemd/dynamic-uid/{uid}")).exists()
}

/// Every uid and gid of the dynamic range that a running process holds (real, effective,
/// saved or file-system).
fn ids_of_processes() -> HashSet<u32> {
    let mut ids = HashSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return ids;
    };
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        ids.extend(
            status
                .lines()
                .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
                .flat_map(|l| l[4..].split_whitespace())
                .filter_map(|v| v.parse::<u32>().ok())
                .filter(|v| (DYNAMIC_FIRST..=DYNAMIC_LAST).contains(v)),
        );
    }
    ids
}

/// The real uid of a process.
fn real_uid(pid: u32) -> Option<u32> {
    ids_of(pid).map(|(uids, _)| uids[0])
}

/// A process's uids and gids (real, effective, saved, file-system), from /proc/PID/status.
pub fn ids_of(pid: u32) -> Option<([u32; 4], [u32; 4])> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let four = |key: &str| -> Option<[u32; 4]> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let v: Vec<u32> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.try_into().ok()
    };
    Some((four("Uid:")?, four("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_callers_accounts_follow_the_rules() {
        let e = grant("a", &Account::Caller, 0, None).unwrap_err();
        assert!(e.to_string().contains("root must be written out"), "{e}");
        assert_eq!(grant("a", &Account::Caller, 1000, None).unwrap().uid, 1000);
        assert_eq!(grant("a", &Account::Root, 0, None).unwrap().uid, 0);
        let e = grant("a", &Account::Root, 1000, None).unwrap_err();
        assert!(e.to_string().contains("only root can start"), "{e}");
        let e = grant("a", &Account::User("root".into()), 0, None);
        assert!(e.is_err(), "an account of uid 0 is root");
        let e = grant("a", &Account::User("no-such-account-x".into()), 0, None).unwrap_err();
        assert!(e.to_string().contains("does not have"), "{e}");
        let d = DynamicUser {
            uid: 61200,
            home: "/h/a".into(),
        };
        let g = grant("a", &Account::Dynamic, 0, Some(&d)).unwrap();
        assert_eq!((g.uid, g.gid, g.groups), (61200, Some(61200), Some(vec![])));
        assert!(grant("a", &Account::Dynamic, 1000, Some(&d)).is_err());
    }

    #[test]
    fn allocates_a_free_uid_with_a_private_home_and_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let users = DynamicUsers::new(dir.path().join("home"), "test");
        let a = users.allocate("a", &HashSet::new()).unwrap();
        assert!((DYNAMIC_FIRST..=DYNAMIC_LAST).contains(&a.uid));
        let m = fs::metadata(&a.home).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (a.uid, a.uid, 0o700));
        // The same agent starts its search at the same uid; another cage's uid is skipped.
        let again = users.allocate("a", &HashSet::from([a.uid])).unwrap();
        assert_ne!(again.uid, a.uid);
        users.release("a", &again);
        assert!(!again.home.exists());
    }
}
