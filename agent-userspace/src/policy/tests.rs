//! The policy language end to end: parsing, locating errors, the shipped files.
use agent_common::egress::{PROTO_TCP, PROTO_UDP};

use super::*;

fn err(yaml: &str) -> String {
    match Policy::from_yaml(yaml, "policies/x.yaml") {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn run_time_sections_parse_and_are_checked() {
    let p = Policy::from_yaml(
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/examples/payments.yaml"
        )),
        "payments.yaml",
    )
    .unwrap();
    let payer = &p.agents["payer"];
    assert!(payer.egress.allow[1].requires_approval);
    assert!(payer.egress.allow[0].read_only);
    assert_eq!(payer.egress.allow[1].name.as_deref(), Some("payments"));
    assert_eq!(payer.approvals.default_for.0.as_secs(), 600);
    assert_eq!(payer.budgets.tokens.unwrap().hard, Some(500_000.0));
    assert_eq!(payer.containment.on_assertion, Rung::Killed);
    assert_eq!(payer.assertions.len(), 2);
    assert!(p.canonical().contains("requires_approval"));

    let e = err("version: 1\nagents:\n  a:\n    groups: [finanse]\ngroups:\n  finance: {}\n");
    assert!(
        e.contains("agents.a.groups: \"finanse\" is not defined"),
        "{e}"
    );
    let e = err("version: 1\nagents:\n  a:\n    egress:\n      allow_events: none\n    assertions: [plan precedes egress(x)]\n");
    assert!(e.contains("set allow_events: all"), "{e}");
    let e = err("version: 1\nagents:\n  a:\n    containment:\n      on_budget: frozen\n");
    assert!(e.starts_with("policies/x.yaml:5:18:"), "{e}");
    let e = err("version: 1\nagents:\n  a:\n    budgets:\n      tokens: {soft: 5, hard: 1}\n");
    assert!(
        e.contains("agents.a.budgets.tokens: the soft limit 5 is above"),
        "{e}"
    );
    let e = err("version: 1\nagents:\n  a:\n    budgets:\n      wall_clock: {hard: soon}\n");
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    // Key order and layout do not change the hash of the run-time sections either.
    let one = "version: 1\nagents:\n  a:\n    budgets: {tokens: {soft: 1, hard: 2}}\n";
    let two = "version: 1\nagents:\n  a:\n    budgets:\n      tokens:\n        hard: 2\n        soft: 1\n";
    let h = |y| Policy::from_yaml(y, "t").unwrap().hash().to_owned();
    assert_eq!(h(one), h(two));
    assert_ne!(h(one), h(&one.replace("hard: 2", "hard: 3")));
}

#[test]
fn record_always_parses_hashes_and_misspellings_are_located() {
    let plain = "version: 1\nagents:\n  a: {}\n";
    let always = "version: 1\nagents:\n  a:\n    record: always\n";
    let p = Policy::from_yaml(always, "t").unwrap();
    assert_eq!(p.agents["a"].record, Record::Always);
    assert!(p.canonical().contains("  record always\n"));
    let h = |y| Policy::from_yaml(y, "t").unwrap().hash().to_owned();
    assert_ne!(h(plain), h(always));
    // The default writes nothing: policies without the field keep their hash.
    assert_eq!(h(plain), h(&plain.replace("{}", "{record: optional}")));
    let e = err("version: 1\nagents:\n  a:\n    record: sometimes\n");
    assert!(e.starts_with("policies/x.yaml:4:13:"), "{e}");
    assert!(e.contains("optional") && e.contains("always"), "{e}");
}

#[test]
fn the_published_schema_is_the_generated_one() {
    let committed = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/schema.json"
    ));
    assert!(
        committed == json_schema(),
        "policies/schema.json is stale: regenerate it with \
             `agentcage policy schema > policies/schema.json`"
    );
}

#[test]
fn policies_larger_than_the_kernel_maps_are_refused_at_load() {
    let mut yaml = String::from("version: 1\nagents:\n  big:\n    egress:\n      allow:\n");
    for i in 0..40_000u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        yaml.push_str(&format!("        - cidr: {a}/32\n"));
    }
    let e = err(&yaml);
    assert!(
        e.starts_with("policies/x.yaml: the policy needs 40000 IPv4 allow-list entries"),
        "{e}"
    );
}

const DEMO: &str = "\
version: 1
agents:
  demo:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [8000-8099, 443]
          protocols: [tcp]
          comment: local dev server
      raw_sockets: false
      allow_events: sample:10
default_agent:
  egress:
    allow: []
";

#[test]
fn parses_the_documented_example() {
    let p = Policy::from_yaml(DEMO, "policies/x.yaml").unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(p.source(), "policies/x.yaml");
    let demo = &p.agents["demo"].egress;
    assert_eq!(
        demo.allow,
        vec![AllowRule {
            dest: Destination::Cidr("127.0.0.1/32".parse().unwrap()),
            ports: vec![
                PortRange { lo: 8000, hi: 8099 },
                PortRange { lo: 443, hi: 443 }
            ],
            protocols: PROTO_TCP,
            comment: Some("local dev server".into()),
            name: None,
            requires_approval: false,
            read_only: false,
        }]
    );
    assert!(!demo.raw_sockets);
    assert_eq!(demo.allow_events, AllowEvents::Sample(10));
    let d = p.default_agent.as_ref().unwrap();
    assert!(d.egress.allow.is_empty());
    assert_eq!(d.egress.allow_events, AllowEvents::All);
    assert_eq!(p.agent("demo"), Some(&p.agents["demo"]));
    assert_eq!(p.agent("someone-else"), Some(d));
}

#[test]
fn defaults() {
    let p = Policy::from_yaml(
        "version: 1\nagents:\n  a: {}\n  b:\n    egress:\n      allow:\n        - cidr: ::1\n",
        "t",
    )
    .unwrap();
    assert_eq!(p.agents["a"], AgentPolicy::default());
    let b = &p.agents["b"].egress;
    assert_eq!(b.allow[0].protocols, PROTO_TCP | PROTO_UDP);
    assert!(b.allow[0].ports.is_empty());
    assert_eq!(b.allow_events, AllowEvents::All);
    assert!(!b.raw_sockets);
    // No default_agent: unknown agents are refused.
    assert_eq!(p.agent("c"), None);
    let only_version = Policy::from_yaml("version: 1\n", "t").unwrap();
    assert!(only_version.agents.is_empty());
}

#[test]
fn ports_as_ints_or_strings_and_empty_lists() {
    let p = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: 10.0.0.0/8\n          ports: [\"443\", 0x50, '1000-2000', 3000 - 3001]\n        - cidr: 10.0.0.0/8\n          ports: []\n        - cidr: 10.0.0.0/8\n          ports:\n",
            "t",
        )
        .unwrap();
    let a = &p.agents["a"].egress.allow;
    assert_eq!(
        a[0].ports,
        vec![
            PortRange { lo: 443, hi: 443 },
            PortRange { lo: 80, hi: 80 },
            PortRange { lo: 1000, hi: 2000 },
            PortRange { lo: 3000, hi: 3001 },
        ]
    );
    assert!(a[1].ports.is_empty());
    assert!(a[2].ports.is_empty());
}

#[test]
fn mapped_ipv6_is_normalised() {
    let p = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: '::ffff:10.0.0.0/104'\n          protocols: [udp, udp]\n",
            "t",
        )
        .unwrap();
    let r = &p.agents["a"].egress.allow[0];
    assert_eq!(r.dest.to_string(), "10.0.0.0/8");
    assert_eq!(r.protocols, PROTO_UDP);
}

#[test]
fn bad_cidr_points_at_the_value() {
    let yaml = DEMO.replace("127.0.0.1/32", "127.0.0.1/33");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"127.0.0.1/33\": prefix length 33 is longer than 32; expected an address like \
             10.0.0.0/8 or 2001:db8::/32"
    );
}

#[test]
fn host_bits_point_at_the_value() {
    let yaml = DEMO.replace("127.0.0.1/32", "127.0.0.1/8");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"127.0.0.1/8\": host bits are set (the address is not the first of its /8 \
             network); write 127.0.0.0/8 for the network, or 127.0.0.1/32 for the single \
             address"
    );
}

#[test]
fn bad_port_range_points_at_the_value() {
    let yaml = DEMO.replace("8000-8099, 443", "443, 8099-8000");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:24: agents.demo.egress.allow[0].ports[1]: invalid port range \
             \"8099-8000\": the range runs backwards (8099 > 8000); write it low-high, e.g. \
             8000-8099"
    );
    let yaml = DEMO.replace("8000-8099, 443", "8000-8099, 65536");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:30: agents.demo.egress.allow[0].ports[1]: port 65536 is larger \
             than 65535; expected a port like 443 or a range like 8000-8099 (0-65535)"
    );
    let yaml = DEMO.replace("8000-8099, 443", "-1");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:19: agents.demo.egress.allow[0].ports[0]: port -1 is negative; \
             expected a port like 443 or a range like 8000-8099 (0-65535)"
    );
}

#[test]
fn unknown_field_points_at_the_key() {
    let yaml = DEMO.replace("      raw_sockets: false", "      raw_socket: false");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:10:7: agents.demo.egress: unknown field `raw_socket`, expected one \
             of `allow`, `raw_sockets`, `allow_events`"
    );
    let yaml = DEMO.replace("          comment:", "          coment:");
    assert!(
        err(&yaml).starts_with(
            "policies/x.yaml:9:11: agents.demo.egress.allow[0]: unknown field `coment`"
        ),
        "{}",
        err(&yaml)
    );
    let yaml = format!("{DEMO}extra: 1\n");
    assert!(
        err(&yaml).starts_with("policies/x.yaml:15:1: unknown field `extra`"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn wrong_version_points_at_the_value() {
    let yaml = DEMO.replace("version: 1", "version: 2");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:1:10: version: unsupported policy version 2; this agentcage \
             understands version: 1"
    );
    let yaml = DEMO.replace("version: 1", "version: one");
    assert!(
        err(&yaml).starts_with("policies/x.yaml:1:10: version: invalid type"),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("version: 1\n", "");
    assert!(
        err(&yaml).starts_with("policies/x.yaml:1:1: missing field `version`"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn yaml_syntax_error_is_located() {
    let yaml = DEMO.replace("raw_sockets: false", "raw_sockets: false: x");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:10:25: mapping values are not allowed in this context"
    );
    let yaml = DEMO.replace("ports: [8000-8099, 443]", "ports: [8000-8099, 443]]");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:34: did not find expected key, while parsing a block mapping at \
             line 6 column 11"
    );
    let yaml = DEMO.replace("          ports:", "\tports:");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:1: found a tab character that violates indentation, while \
             scanning a plain scalar at line 6 column 17"
    );
}

#[test]
fn bad_agent_name_points_at_the_key() {
    let yaml = DEMO.replace("  demo:", "  ../etc:");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:3:3: agents: invalid agent name \"../etc\": character '/' is not \
             allowed; expected 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting \
             with '.' or '-'"
    );
    let yaml = format!("{DEMO}agents:\n  x: {{}}\n");
    assert!(
        err(&yaml).contains("duplicate field `agents`"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn duplicate_agent_points_at_the_second_key() {
    let yaml = "version: 1\nagents:\n  demo: {}\n  other: {}\n  demo: {}\n";
    assert_eq!(
        err(yaml),
        "policies/x.yaml:5:3: agents: agent \"demo\" is listed twice; expected each agent \
             once"
    );
}

#[test]
fn other_value_errors() {
    let yaml = DEMO.replace("protocols: [tcp]", "protocols: [tcp, icmp]");
    assert!(
        err(&yaml).starts_with(
            "policies/x.yaml:8:28: agents.demo.egress.allow[0].protocols[1]: unknown \
                 protocol \"icmp\"; expected tcp or udp"
        ),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("protocols: [tcp]", "protocols: []");
    assert!(
        err(&yaml).starts_with(
            "policies/x.yaml:8:22: agents.demo.egress.allow[0].protocols: protocols is empty"
        ),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("sample:10", "sample:0");
    assert!(
        err(&yaml).starts_with(
            "policies/x.yaml:11:21: agents.demo.egress.allow_events: invalid allow_events \
                 \"sample:0\""
        ),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("sample:10", "sample:4294967296");
    assert!(
        err(&yaml).contains("4294967296 is larger than 4294967295"),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("ports: [8000-8099, 443]", "ports: 443");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:7:18: agents.demo.egress.allow[0].ports: invalid type: integer \
             `443`, expected a list of ports, e.g. [443] or [8000-8099, 443]"
    );
    let yaml = DEMO.replace("cidr: 127.0.0.1/32", "cidr: example.com");
    assert_eq!(
        err(&yaml),
        "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"example.com\": \"example.com\" is not an IPv4 or IPv6 address; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
    );
    let yaml = DEMO.replace("raw_sockets: false", "raw_sockets: maybe");
    assert!(
        err(&yaml).starts_with("policies/x.yaml:10:20: agents.demo.egress.raw_sockets: "),
        "{}",
        err(&yaml)
    );
    let yaml = DEMO.replace("          ports: [8000-8099, 443]\n", "");
    let yaml = yaml.replace("- cidr: 127.0.0.1/32\n          protocols", "- protocols");
    assert!(
        err(&yaml).contains("a rule needs a destination: cidr (10.0.0.0/8) or host"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn empty_policy() {
    assert_eq!(
        err("# nothing here\n\n"),
        "policies/x.yaml: the policy is empty; expected a mapping starting with version: 1"
    );
    assert!(
        err("[]").starts_with("policies/x.yaml:1:1: invalid type"),
        "{}",
        err("[]")
    );
}

#[test]
fn compile_errors_point_at_the_rule() {
    let mut yaml = String::from("version: 1\nagents:\n  demo:\n    egress:\n      allow:\n");
    yaml.push_str("        - cidr: 0.0.0.0/0\n          ports: [53]\n          protocols: [udp]\n");
    for i in 0..16 {
        yaml.push_str(&format!(
            "        - {{cidr: 10.0.0.0/8, ports: [{}], protocols: [tcp]}}\n",
            1000 + 2 * i
        ));
    }
    let e = err(&yaml);
    assert!(
            e.starts_with(
                "policies/x.yaml:9:11: agents.demo.egress.allow[1] (10.0.0.0/8): more than 16 port rules"
            ),
            "{e}"
        );
    let d = yaml.replace("agents:\n  demo:\n", "default_agent:\n");
    let d = d.replace("\n    ", "\n  ");
    let e = err(&d);
    assert!(
            e.starts_with(
                "policies/x.yaml:8:9: default_agent.egress.allow[1] (10.0.0.0/8): more than 16 port rules"
            ),
            "{e}"
        );
}

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("agentcage-policy-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.yaml");
    fs::write(&file, DEMO).unwrap();
    let p = Policy::load(&file).unwrap();
    assert_eq!(p.source(), file.display().to_string());
    assert_eq!(
        p.hash(),
        Policy::from_yaml(DEMO, "elsewhere").unwrap().hash()
    );

    fs::write(&file, DEMO.replace("version: 1", "version: 3")).unwrap();
    let e = Policy::load(&file).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:1:10: version: ", file.display())),
        "{e}"
    );

    let missing = dir.join("missing.yaml");
    let e = Policy::load(&missing).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read policy: ", missing.display())),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn agent_names() {
    for ok in ["demo", "a", "A.b_c-9", "x.", &"a".repeat(64)] {
        assert!(validate_agent_name(ok).is_ok(), "{ok}");
    }
    for (bad, reason) in [
        ("", "it is empty"),
        (".hidden", "it starts with '.'"),
        ("..", "it starts with '.'"),
        ("-x", "it starts with '-'"),
        ("a/b", "character '/' is not allowed"),
        ("a b", "character ' ' is not allowed"),
        ("é", "character 'é' is not allowed"),
        ("a\nb", "character '\\n' is not allowed"),
        ("cgroup.procs", "the kernel's cgroup files"),
    ] {
        let e = validate_agent_name(bad).unwrap_err().to_string();
        assert!(e.contains(reason), "{bad:?}: {e}");
    }
    let e = validate_agent_name(&"a".repeat(65))
        .unwrap_err()
        .to_string();
    assert!(e.contains("it is 65 characters long, more than 64"), "{e}");
}

#[test]
fn shipped_policies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let p = Policy::load(&dir.join("default.yaml")).unwrap();
    // The README walkthrough: 127.0.0.1:8080 allowed by allow[0]; 127.0.0.2 has no entry.
    let demo = compile_egress("demo", &p.agents["demo"].egress).unwrap();
    assert!(demo.v6.is_empty());
    assert_eq!(demo.v4.len(), 1);
    let (addr, len, rules) = &demo.v4[0];
    assert_eq!((*addr, *len, rules.count), ([127, 0, 0, 1], 32, 1));
    let r = rules.rules[0];
    assert_eq!(
        (r.port_lo, r.port_hi, r.protocols, r.rule_id),
        (8000, 8099, PROTO_TCP, 0)
    );
    assert!(p.default_agent.as_ref().unwrap().egress.allow.is_empty());
    let examples = dir.join("examples");
    for entry in fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Policy::load(&path).unwrap();
        }
    }
}
