//! Every telemetry name the daemon emits, defined once. Stable OpenTelemetry conventions where
//! they exist, the GenAI conventions for agents, tools and tokens (the semantic-conventions
//! crate's GenAI constants are deprecated, so they are spelled here), `agentcage.*` for the rest.

// Resource.
/// `service.name`.
pub const SERVICE_NAME: &str = "service.name";
/// `service.version`.
pub const SERVICE_VERSION: &str = "service.version";
/// `service.instance.id`: this daemon's run.
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// `host.name`.
pub const HOST_NAME: &str = "host.name";
/// `host.id` (the machine id).
pub const HOST_ID: &str = "host.id";
/// The node identity (the Kubernetes node name where deployed as a DaemonSet).
pub const NODE_ID: &str = "agentcage.node.id";
/// `k8s.node.name`, when known.
pub const K8S_NODE_NAME: &str = "k8s.node.name";
/// SHA-256 of the policy in force when the daemon started.
pub const POLICY_HASH: &str = "agentcage.policy.hash";
/// A behavior certificate's id: on the resource when configured, and on the records of an
/// agent while a valid certificate is in force for it.
pub const CERTIFICATE_ID: &str = "agentcage.certificate.id";

// Containers and Kubernetes (the container a caged process runs in).
/// `container.id`.
pub const CONTAINER_ID: &str = "container.id";
/// `container.name`.
pub const CONTAINER_NAME: &str = "container.name";
/// `container.image.name`.
pub const CONTAINER_IMAGE_NAME: &str = "container.image.name";
/// `k8s.pod.name`.
pub const K8S_POD_NAME: &str = "k8s.pod.name";
/// `k8s.namespace.name`.
pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";

// GenAI (agents, tools, tokens).
/// `gen_ai.agent.name`: the agent's name as the policy knows it.
pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
/// `gen_ai.agent.id`: the agent's SPIFFE ID (`spiffe://TRUST_DOMAIN/agent/NAME`). Until
/// agent identities it carried `agent:NAME`, now in [`AGENT_IDENTITY`].
pub const GEN_AI_AGENT_ID: &str = "gen_ai.agent.id";
/// The agent's local identity, `agent:NAME` (what events' `agent` field says).
pub const AGENT_IDENTITY: &str = "agentcage.agent.identity";
/// `gen_ai.operation.name` (`invoke_agent`, `execute_tool`).
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.tool.name`.
pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
/// `gen_ai.tool.call.id`.
pub const GEN_AI_TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
/// `gen_ai.conversation.id`: the user session an application reported.
pub const GEN_AI_CONVERSATION_ID: &str = "gen_ai.conversation.id";
/// `gen_ai.usage.input_tokens`.
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`.
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.token.type` (`input`, `output`) on the token-usage histogram.
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
/// `gen_ai.operation.name` value of the agent-session span.
pub const OP_INVOKE_AGENT: &str = "invoke_agent";
/// `gen_ai.operation.name` value of tool-call spans.
pub const OP_EXECUTE_TOOL: &str = "execute_tool";

// Network and process (stable).
/// `server.address`: the destination of an egress attempt.
pub const SERVER_ADDRESS: &str = "server.address";
/// The peer that reached (or tried to reach) the agent's listener.
pub const CLIENT_ADDRESS: &str = "client.address";
/// `server.port`.
pub const SERVER_PORT: &str = "server.port";
/// `network.peer.address`: the address of an egress attempt whose `server.address` is the
/// name that granted it.
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// `dns.question.name`: the name a DNS query asked.
pub const DNS_QUESTION_NAME: &str = "dns.question.name";
/// `dns.question.type` (`A`, `AAAA`, `TXT`, ...).
pub const DNS_QUESTION_TYPE: &str = "agentcage.dns.question.type";
/// `dns.answers`: the addresses an allowed query granted.
pub const DNS_ANSWERS: &str = "dns.answers";
/// Whether an allowed query was answered from the cage's resolver's cache (true) rather
/// than asked upstream.
pub const DNS_CACHED: &str = "agentcage.dns.cached";
/// The log record event name of DNS queries.
pub const EVENT_DNS: &str = "agentcage.dns.query";
/// `network.transport` (`tcp`, `udp`, or the protocol number).
pub const NETWORK_TRANSPORT: &str = "network.transport";
/// `network.type` (`ipv4`, `ipv6`).
pub const NETWORK_TYPE: &str = "network.type";
/// `process.pid` (the thread group id): on logs and spans only, never on metrics.
pub const PROCESS_PID: &str = "process.pid";
/// `thread.id`.
pub const THREAD_ID: &str = "thread.id";
/// `process.executable.name` (the kernel's comm).
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
/// `process.executable.path`.
pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";

// agentcage.
/// The spool sequence number of the record: lets a consumer drop a re-sent duplicate.
pub const EVENT_SEQ: &str = "agentcage.event.seq";
/// The event's kind (`egress`, `session`, ...).
pub const EVENT_KIND: &str = "agentcage.event.kind";
/// The cage's cgroup id.
pub const CGROUP_ID: &str = "agentcage.cgroup.id";
/// `allow` or `deny`.
pub const VERDICT: &str = "agentcage.verdict";
/// The rule that decided (`egress.allow[N]`, `default-deny`, ...).
pub const RULE: &str = "agentcage.rule";
/// The rule's text.
pub const RULE_TEXT: &str = "agentcage.rule.text";
/// The kernel hook (`connect4`, `sendmsg6`, ...).
pub const HOOK: &str = "agentcage.hook";
/// The socket type (`stream`, `dgram`, `raw`).
pub const SOCKET_TYPE: &str = "agentcage.socket.type";
/// The session action (`start`, `end`).
pub const SESSION_ACTION: &str = "agentcage.session.action";
/// How many events a drop record stands for.
pub const DROPPED_COUNT: &str = "agentcage.dropped.count";
/// Why events were dropped (`size_bound`, `write_error`; `bus_lag` from earlier versions).
pub const DROPPED_REASON: &str = "agentcage.dropped.reason";
/// `applied` or `refused` (policy reloads).
pub const POLICY_RESULT: &str = "agentcage.policy.result";
/// The policy file.
pub const POLICY_SOURCE: &str = "agentcage.policy.source";
/// `error.message`: why something failed.
pub const ERROR_MESSAGE: &str = "error.message";
/// An approval's id (reported by applications; issue 4).
pub const APPROVAL_ID: &str = "agentcage.approval.id";
/// A ticket's id (reported by applications; issue 4).
pub const TICKET_ID: &str = "agentcage.ticket.id";
/// The kind of latency on the latency histogram (`queueing`, `model`, `tool`).
pub const LATENCY_KIND: &str = "agentcage.latency.kind";
/// The budget a usage counter is about.
pub const BUDGET: &str = "agentcage.budget";

// Event names (log records) and span names.
/// An egress decision.
pub const EVENT_EGRESS_DECISION: &str = "agentcage.egress.decision";
/// An agent session started or ended (its cage was made or removed).
pub const EVENT_SESSION: &str = "agentcage.session";
/// A policy reload, applied or refused.
pub const EVENT_POLICY: &str = "agentcage.policy.reload";
/// Events that were never exported.
pub const EVENT_DROPPED: &str = "agentcage.telemetry.dropped";
/// A process execution (issue 3's exec events map here).
pub const EVENT_EXEC: &str = "agentcage.exec";
/// A new process in a cage.
pub const EVENT_PROCESS_FORK: &str = "agentcage.process.fork";
/// A caged process ended.
pub const EVENT_PROCESS_EXIT: &str = "agentcage.process.exit";
/// An operation on a watched or protected file.
pub const EVENT_FILE: &str = "agentcage.file.access";
/// A Unix-socket connect or send, judged.
pub const EVENT_UNIX_DECISION: &str = "agentcage.unix.decision";
/// Stable process conventions for exec and exit.
pub const PROCESS_COMMAND_ARGS: &str = "process.command_args";
/// The parent's pid.
pub const PROCESS_PARENT_PID: &str = "process.parent_pid";
/// Exit code of an ended process.
pub const PROCESS_EXIT_CODE: &str = "process.exit.code";
/// Path of a file.
pub const FILE_PATH: &str = "file.path";
/// SHA-256 of the executed file.
pub const EXEC_SHA256: &str = "agentcage.exec.sha256";
/// The signal that ended a process.
pub const EXIT_SIGNAL: &str = "agentcage.process.exit.signal";
/// The new process of a fork.
pub const CHILD_PID: &str = "agentcage.process.child_pid";
/// What was attempted on a file (`open`, `unlink`, ...).
pub const FILE_OP: &str = "agentcage.file.op";
/// `read`, `write` or `read+write`.
pub const FILE_ACCESS: &str = "agentcage.file.access";
/// A containment action (freeze, kill, restore).
pub const EVENT_CONTAINMENT: &str = "agentcage.containment";

// Metrics.
/// Decisions, by verdict (and hook, agent).
pub const METRIC_DECISIONS: &str = "agentcage.decisions";
/// Events the kernel could not report (ring buffer full).
pub const METRIC_EVENTS_LOST: &str = "agentcage.events.lost";
/// Events the spool dropped (size bound, bus lag).
pub const METRIC_SPOOL_DROPPED: &str = "agentcage.spool.dropped";
/// Bytes in the spool.
pub const METRIC_SPOOL_SIZE: &str = "agentcage.spool.size";
/// Records in the spool not yet exported, per signal.
pub const METRIC_SPOOL_BACKLOG: &str = "agentcage.spool.backlog";
/// Budget used (issue 4 feeds it).
pub const METRIC_BUDGET_USED: &str = "agentcage.budget.used";
/// `gen_ai.client.token.usage` (issue 4 feeds it).
pub const METRIC_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Cost of model usage (issue 4 feeds it).
pub const METRIC_COST: &str = "agentcage.cost";
/// Latency, with [`LATENCY_KIND`] keeping queueing, model and tool time apart.
pub const METRIC_LATENCY: &str = "agentcage.latency";

/// The instrumentation scope of everything the daemon emits.
pub const SCOPE: &str = "agentcaged";

/// The rung a cage moved to.
pub const CONTAINMENT_RUNG: &str = "agentcage.containment.rung";
/// The rung before.
pub const CONTAINMENT_PREVIOUS: &str = "agentcage.containment.previous";
/// Why it moved.
pub const CONTAINMENT_REASON: &str = "agentcage.containment.reason";
/// The forensic snapshot written.
pub const CONTAINMENT_SNAPSHOT: &str = "agentcage.containment.snapshot";
/// A tool call reported by the application.
pub const EVENT_TOOL_CALL: &str = "agentcage.app.tool_call";
/// A model call reported by the application.
pub const EVENT_MODEL_CALL: &str = "agentcage.app.model_call";
/// Another application event (plan, approval, ticket comment, notify, exec).
pub const EVENT_APP: &str = "agentcage.app";
/// An approval requested or decided.
pub const EVENT_APPROVAL: &str = "agentcage.approval";
/// A budget limit reached.
pub const EVENT_BUDGET: &str = "agentcage.budget";
/// A temporal assertion violated.
pub const EVENT_ASSERTION: &str = "agentcage.assertion";
/// GenAI: the model asked for.
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// Digest of a tool call's arguments.
pub const TOOL_ARGS_DIGEST: &str = "agentcage.tool.args_digest";
/// Cost of a model call in US dollars.
pub const COST_USD: &str = "agentcage.cost.usd";
/// An approval's state.
pub const APPROVAL_STATE: &str = "agentcage.approval.state";
/// What an approval is for.
pub const APPROVAL_SUBJECT: &str = "agentcage.approval.subject";
/// Who decided an approval.
pub const APPROVAL_APPROVER: &str = "agentcage.approval.approver";
/// Whose budget (`agent`, `group:NAME`, `workflow:NAME`).
pub const BUDGET_SCOPE: &str = "agentcage.budget.scope";
/// `soft` or `hard`.
pub const BUDGET_LEVEL: &str = "agentcage.budget.level";
/// The value reached.
pub const BUDGET_VALUE: &str = "agentcage.budget.value";
/// The limit.
pub const BUDGET_LIMIT: &str = "agentcage.budget.limit";
/// A temporal assertion's text.
pub const ASSERTION: &str = "agentcage.assertion";
/// A credential granted, refused or revoked.
pub const EVENT_CREDENTIAL: &str = "agentcage.credential";
/// `granted`, `refused` or `revoked`.
pub const CREDENTIAL_ACTION: &str = "agentcage.credential.action";
/// The method a credential is for.
pub const CREDENTIAL_METHOD: &str = "agentcage.credential.method";
/// The resource a credential is for.
pub const CREDENTIAL_RESOURCE: &str = "agentcage.credential.resource";
/// The user an agent asked on behalf of.
pub const CREDENTIAL_ON_BEHALF_OF: &str = "agentcage.credential.on_behalf_of";
/// A token's id.
pub const CREDENTIAL_JTI: &str = "agentcage.credential.jti";
/// Why a credential was refused or revoked.
pub const CREDENTIAL_REASON: &str = "agentcage.credential.reason";
/// Repeats of one egress decision, summarized (a flood).
pub const EVENT_EGRESS_SUMMARY: &str = "agentcage.egress.summary";
/// How many decisions a summary stands for (none of them was exported on its own).
pub const SUMMARY_COUNT: &str = "agentcage.summary.count";
/// When the first decision a summary counts was made, ns since the Unix epoch.
pub const SUMMARY_FIRST: &str = "agentcage.summary.first_time_unix_nano";
