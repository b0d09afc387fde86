//! The dynamic loader run as a program: `ld.so PROGRAM` maps PROGRAM without an exec, so no
//! exec rule ever sees PROGRAM. In a cage with exec rules, the loaders are therefore refused
//! as the main program of an exec (deny tier: EPERM; kill tier: killed), while every dynamic
//! program still maps them as its interpreter: by file always, and by content where the
//! policy already judges content (deny rules, `sha256:` rules), so a copy of a loader is
//! refused too. Naming a loader by its exact path (or content) in `exec.allow` lifts this.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use agent_common::process::{ExecRule, EXEC_DENY_MAIN, EXEC_RULE_LOADER};

use super::{
    exec::{ExecMatch, ExecPolicy},
    inodes::{glob_chars, identity, insert_hash, insert_inode, sha256_file, CompiledExec},
};

/// Where dynamic loaders live: glibc's `ld-linux*.so*` and musl's `ld-musl-*.so*`, on the
/// usual paths of every architecture and multiarch layout.
const LOADER_GLOBS: [&str; 10] = [
    "/lib/ld-*.so*",
    "/lib64/ld-*.so*",
    "/lib32/ld-*.so*",
    "/libx32/ld-*.so*",
    "/lib/*-linux-*/ld-*.so*",
    "/usr/lib/ld-*.so*",
    "/usr/lib64/ld-*.so*",
    "/usr/lib32/ld-*.so*",
    "/usr/libx32/ld-*.so*",
    "/usr/lib/*-linux-*/ld-*.so*",
];

/// The dynamic loaders on this host, each file once (symlinks resolved).
pub fn loaders() -> Vec<PathBuf> {
    let found: BTreeSet<PathBuf> = LOADER_GLOBS
        .iter()
        .filter_map(|g| glob::glob(g).ok())
        .flat_map(|paths| paths.flatten())
        .filter_map(|p| p.canonicalize().ok())
        .filter(|p| p.is_file())
        .collect();
    found.into_iter().collect()
}

/// Adds the "not as the main program" rules for the loaders to `out`, once the policy's own
/// rules are in; `exec` is the policy's section (its exact-path and content allow rules
/// naming a loader lift the rule for it).
pub(super) fn add_loader_rules(out: &mut CompiledExec, exec: &ExecPolicy) {
    let rule = ExecRule {
        action: EXEC_DENY_MAIN,
        rule_id: EXEC_RULE_LOADER,
    };
    let allowed_files: BTreeSet<(u32, u64)> = exec
        .allow
        .iter()
        .filter_map(|m| match m {
            ExecMatch::Path(p) if !glob_chars(p) => identity(Path::new(p)).ok(),
            _ => None,
        })
        .collect();
    let by_content = !out.hashes.is_empty();
    for loader in loaders() {
        let Ok(id) = identity(&loader) else {
            continue;
        };
        if allowed_files.contains(&id) {
            continue;
        }
        let digest = if by_content {
            match sha256_file(&loader) {
                Ok(d) => Some(d),
                Err(e) => {
                    out.unmatched.push(format!(
                        "dynamic loader {}: content not hashed, its copies are not refused: {e}",
                        loader.display()
                    ));
                    None
                }
            }
        } else {
            None
        };
        if digest.is_some_and(|d| exec.allow.contains(&ExecMatch::Sha256(d))) {
            continue;
        }
        insert_inode(&mut out.inodes, id, rule);
        if let Some(d) = digest {
            insert_hash(&mut out.hashes, d, rule);
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_common::process::{EXEC_ALLOW, EXEC_DENY};

    use super::*;
    use crate::policy::{compile_exec, ExecDefault};

    fn this_hosts_loader() -> PathBuf {
        loaders()
            .into_iter()
            .next()
            .expect("this host runs dynamic programs, so it has a loader")
    }

    #[test]
    fn a_cage_with_exec_rules_refuses_the_loader_as_a_program() {
        let loader = this_hosts_loader();
        let id = identity(&loader).unwrap();
        let none = compile_exec("a.exec", &ExecPolicy::default(), &[]);
        assert!(none.inodes.is_empty(), "no exec rules, no loader rule");

        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        let deny = ExecPolicy {
            deny: vec![ExecMatch::Path(tool.display().to_string())],
            ..ExecPolicy::default()
        };
        let c = compile_exec("a.exec", &deny, &[]);
        assert_eq!(
            c.inodes[&id],
            ExecRule {
                action: EXEC_DENY_MAIN,
                rule_id: EXEC_RULE_LOADER
            }
        );
        let digest = sha256_file(&loader).unwrap();
        assert_eq!(
            c.hashes[&digest].action, EXEC_DENY_MAIN,
            "deny rules judge content, so copies of the loader are refused too"
        );

        // An allow list judges by file: the loader's file only.
        let allow = ExecPolicy {
            default: ExecDefault::Deny,
            allow: vec![ExecMatch::Path(format!(
                "{}/ld-*",
                loader.parent().unwrap().display()
            ))],
            ..ExecPolicy::default()
        };
        let c = compile_exec("a.exec", &allow, &[]);
        assert_eq!(
            c.inodes[&id].action, EXEC_DENY_MAIN,
            "a glob does not lift it"
        );
        assert!(c.hashes.is_empty());
    }

    #[test]
    fn naming_the_loader_exactly_lifts_its_rule_and_a_deny_stays_a_deny() {
        let loader = this_hosts_loader();
        let id = identity(&loader).unwrap();
        let named = ExecPolicy {
            allow: vec![ExecMatch::Path(loader.display().to_string())],
            ..ExecPolicy::default()
        };
        let c = compile_exec("a.exec", &named, &[]);
        assert_eq!(c.inodes[&id].action, EXEC_ALLOW);

        let denied = ExecPolicy {
            deny: vec![ExecMatch::Path(loader.display().to_string())],
            ..ExecPolicy::default()
        };
        let c = compile_exec("a.exec", &denied, &[]);
        assert_eq!(
            c.inodes[&id],
            ExecRule {
                action: EXEC_DENY,
                rule_id: 0
            },
            "the policy's own deny (also as a mapping) wins"
        );
    }
}
