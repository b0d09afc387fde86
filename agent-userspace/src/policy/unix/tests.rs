use super::*;

fn compile(entries: &[&str]) -> CompiledUnix {
    let policy = UnixPolicy {
        allow: entries
            .iter()
            .map(|e| UnixPattern::parse(e).unwrap().0)
            .collect(),
    };
    compile_unix("agents.a.unix", Some(&policy), None).unwrap()
}

fn abstract_name(name: &str) -> Vec<u8> {
    let mut a = vec![0];
    a.extend_from_slice(name.as_bytes());
    a
}

#[test]
fn exact_paths_match_exactly() {
    let c = compile(&["/run/docker.sock", "/run/user/1000/bus"]);
    assert_eq!(c.first_match(b"/run/docker.sock"), Some(0));
    assert_eq!(c.first_match(b"/run/user/1000/bus"), Some(1));
    for other in [
        &b"/run/docker.soc"[..],
        b"/run/docker.sock2",
        b"/run/docker.sockx",
        b"run/docker.sock",
        b"/RUN/docker.sock",
        b"",
    ] {
        assert_eq!(
            c.first_match(other),
            None,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn globs_keep_to_path_components_unless_doubled() {
    let c = compile(&["/tmp/ssh-*/agent.*", "/run/user/**", "/var/run/?.sock"]);
    assert_eq!(c.first_match(b"/tmp/ssh-abc123/agent.4242"), Some(0));
    assert_eq!(c.first_match(b"/tmp/ssh-/agent."), Some(0));
    assert_eq!(
        c.first_match(b"/tmp/ssh-a/b/agent.1"),
        None,
        "* stays in one component"
    );
    assert_eq!(c.first_match(b"/run/user/1000/bus"), Some(1));
    assert_eq!(c.first_match(b"/run/user/1000/a/b/c"), Some(1));
    assert_eq!(c.first_match(b"/var/run/x.sock"), Some(2));
    assert_eq!(c.first_match(b"/var/run/xy.sock"), None);
    assert_eq!(c.first_match(b"/var/run//.sock"), None, "? is not /");
}

#[test]
fn the_first_matching_entry_is_reported() {
    let c = compile(&["/run/a*", "/run/ab"]);
    assert_eq!(c.first_match(b"/run/ab"), Some(0));
    let c = compile(&["/run/ab", "/run/a*"]);
    assert_eq!(c.first_match(b"/run/ab"), Some(0));
    assert_eq!(c.first_match(b"/run/ac"), Some(1));
}

#[test]
fn abstract_names_are_their_own_namespace() {
    let c = compile(&["@/tmp/.X11-unix/X*", "@dbus-*"]);
    assert_eq!(c.first_match(&abstract_name("/tmp/.X11-unix/X0")), Some(0));
    assert_eq!(c.first_match(&abstract_name("dbus-xyz")), Some(1));
    assert_eq!(
        c.first_match(b"/tmp/.X11-unix/X0"),
        None,
        "a path is not the abstract name"
    );
    let p = compile(&["/tmp/.X11-unix/X0"]);
    assert_eq!(p.first_match(&abstract_name("/tmp/.X11-unix/X0")), None);
}

#[test]
fn names_with_any_bytes_are_literal() {
    let c = compile(&["/run/a.b+c(d)$", r"/run/star\*", "/run/é"]);
    assert_eq!(c.first_match(b"/run/a.b+c(d)$"), Some(0));
    assert_eq!(c.first_match(b"/run/aXb+c(d)$"), None, ". is literal");
    assert_eq!(c.first_match(b"/run/star*"), Some(1));
    assert_eq!(c.first_match(b"/run/starx"), None);
    assert_eq!(c.first_match("/run/é".as_bytes()), Some(2));
}

#[test]
fn classes_match_one_byte() {
    let c = compile(&["/run/sock[0-9]", "/run/x[!ab]"]);
    assert_eq!(c.first_match(b"/run/sock7"), Some(0));
    assert_eq!(c.first_match(b"/run/sockx"), None);
    assert_eq!(c.first_match(b"/run/xc"), Some(1));
    assert_eq!(c.first_match(b"/run/xa"), None);
}

#[test]
fn an_empty_list_confines_and_allows_nothing() {
    let c = compile_unix("a", Some(&UnixPolicy::default()), None).unwrap();
    assert!(c.confined);
    assert!(c.transitions.is_empty());
    assert_eq!(c.first_match(b"/run/docker.sock"), None);
    let none = compile_unix("a", None, Some(b"/run/app.sock")).unwrap();
    assert!(!none.confined);
}

#[test]
fn the_application_socket_is_always_reachable_and_named_as_such() {
    let app = b"/run/agentcage/app.sock";
    let c = compile_unix("a", Some(&UnixPolicy::default()), Some(app)).unwrap();
    assert_eq!(c.first_match(app), Some(usize::MAX));
    assert_eq!(c.first_match(b"/run/agentcage/app.sock2"), None);
    // An entry that also matches it decides first.
    let policy = UnixPolicy {
        allow: vec![UnixPattern::parse("/run/agentcage/*").unwrap().0],
    };
    let c = compile_unix("a", Some(&policy), Some(app)).unwrap();
    assert_eq!(c.first_match(app), Some(0));
}

#[test]
fn the_table_stays_small() {
    // A literal path is a chain: one transition per byte, nothing else.
    let c = compile(&["/run/docker.sock"]);
    assert_eq!(c.transitions.len(), "/run/docker.sock".len());
    // The handful of states after a star have a transition per class but '/'; the classes
    // are few (about two per byte the entries name: the byte, and the run before it).
    let c = compile(&["/tmp/*.sock"]);
    let classes = c
        .classes
        .class
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(classes <= 2 * "/tmp.sock".len(), "{classes} classes");
    assert!(
        c.transitions.len() <= 10 * classes,
        "{}",
        c.transitions.len()
    );
}

#[test]
fn bad_entries_are_refused_with_what_is_expected() {
    for (entry, says) in [
        ("run/docker.sock", "neither an absolute path nor @name"),
        ("@", "names no abstract socket"),
        ("/run/{a,b}", "braces are not supported"),
        ("/run/[ab", "not closed"),
        ("/run/x\\", "lone"),
    ] {
        let err = UnixPattern::parse(entry).unwrap_err();
        assert!(err.contains(says), "{entry}: {err}");
        assert!(err.contains("expected"), "{entry}: {err}");
    }
    let long = format!("/{}", "a".repeat(UNIX_PATH_MAX));
    assert!(UnixPattern::parse(&long)
        .unwrap_err()
        .contains("longer than a socket address"));
    assert!(UnixPattern::parse(&format!("/{}/*", "a".repeat(100))).is_ok());
}
