//! The daemon's metrics. Attributes stay low-cardinality: verdict, hook, agent name, kind;
//! never a pid or an address.
//!
//! Decisions, lost and dropped events, spool size and backlog, and queueing latency are fed
//! today. Token usage, cost, budget use, and model and tool latency are fed by the agent and
//! application events of issue 4 through [`Instruments::record_tokens`],
//! [`Instruments::record_cost`], [`Instruments::record_budget`] and
//! [`Instruments::record_latency`] (extension points).

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use opentelemetry::{
    metrics::{Counter, Histogram, Meter},
    KeyValue,
};

use super::semconv as sc;
use crate::events::{Event, EventDetail};

/// Synchronous instruments.
#[derive(Clone)]
pub struct Instruments {
    decisions: Counter<u64>,
    latency: Histogram<f64>,
    tokens: Histogram<u64>,
    cost: Counter<f64>,
    budget: Counter<f64>,
}

/// The spool's figures at one collection.
pub struct SpoolGauges {
    /// Bytes on disk.
    pub bytes: u64,
    /// Events dropped since the spool was made.
    pub dropped: u64,
    /// Per reader, records not yet acknowledged.
    pub backlog: Vec<(&'static str, u64)>,
}

/// Reads the spool's figures.
pub type SpoolReading = Arc<dyn Fn() -> SpoolGauges + Send + Sync>;

/// Values read at each collection.
pub struct Observed {
    /// Events the kernel could not report.
    pub kernel_lost: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Spool bytes, dropped count, and backlog per reader.
    pub spool: SpoolReading,
}

impl Instruments {
    /// Creates the instruments on `meter`, and the observed ones with their callbacks.
    pub fn new(meter: &Meter, observed: Observed) -> Self {
        let lost = observed.kernel_lost;
        meter
            .u64_observable_counter(sc::METRIC_EVENTS_LOST)
            .with_description("Events the kernel could not report (ring buffer full)")
            .with_callback(move |o| o.observe(lost(), &[]))
            .build();
        let spool = Arc::clone(&observed.spool);
        meter
            .u64_observable_counter(sc::METRIC_SPOOL_DROPPED)
            .with_description("Events never exported: spool size bound reached, or bus lag")
            .with_callback(move |o| o.observe(spool().dropped, &[]))
            .build();
        let spool = Arc::clone(&observed.spool);
        meter
            .u64_observable_gauge(sc::METRIC_SPOOL_SIZE)
            .with_unit("By")
            .with_description("Bytes in the spool")
            .with_callback(move |o| o.observe(spool().bytes, &[]))
            .build();
        let spool = observed.spool;
        meter
            .u64_observable_gauge(sc::METRIC_SPOOL_BACKLOG)
            .with_description("Records in the spool not yet acknowledged by the collector")
            .with_callback(move |o| {
                for (signal, n) in spool().backlog {
                    o.observe(n, &[KeyValue::new("signal", signal)]);
                }
            })
            .build();
        Self {
            decisions: meter
                .u64_counter(sc::METRIC_DECISIONS)
                .with_description("Enforcement decisions, by verdict")
                .build(),
            latency: meter
                .f64_histogram(sc::METRIC_LATENCY)
                .with_unit("s")
                .with_description("Latency by kind: queueing (kernel to spool), model, tool")
                .build(),
            tokens: meter
                .u64_histogram(sc::METRIC_TOKEN_USAGE)
                .with_unit("{token}")
                .with_description("Tokens used per model call")
                .build(),
            cost: meter
                .f64_counter(sc::METRIC_COST)
                .with_unit("{USD}")
                .with_description("Cost of model usage")
                .build(),
            budget: meter
                .f64_counter(sc::METRIC_BUDGET_USED)
                .with_description("Budget used, per budget")
                .build(),
        }
    }

    /// Counts events as they reach the spool: decisions by verdict, hook and agent (a
    /// summary of repeated egress decisions with its true count), summed over the batch.
    pub fn on_events(&self, events: &[Arc<Event>], now_unix_nano: u64) {
        let mut decisions: HashMap<(Cow<'static, str>, Cow<'static, str>, &str), u64> =
            HashMap::new();
        for event in events {
            let queued = now_unix_nano.saturating_sub(event.time_unix_nano) as f64 / 1e9;
            self.record_latency("queueing", queued);
            let agent = event.agent_name().unwrap_or("");
            let decided = match &event.detail {
                EventDetail::Egress(d) => Some((d.verdict.name(), d.hook.name(), 1)),
                EventDetail::EgressSummary(s) => {
                    Some((s.decision.verdict.name(), s.decision.hook.name(), s.count))
                }
                EventDetail::Exec(d) => Some((d.verdict.name(), d.hook.name(), 1)),
                EventDetail::File(d) => {
                    Some((d.verdict.name(), Cow::Owned(format!("file_{}", d.op)), 1))
                }
                EventDetail::Unix(d) => Some((d.verdict.name(), Cow::Owned(d.hook.to_string()), 1)),
                _ => None,
            };
            if let Some((verdict, hook, n)) = decided {
                *decisions.entry((verdict, hook, agent)).or_default() += n;
                continue;
            }
            self.on_other(agent, &event.detail);
        }
        for ((verdict, hook, agent), n) in decisions {
            let mut attrs = vec![
                KeyValue::new(sc::VERDICT, verdict.into_owned()),
                KeyValue::new(sc::HOOK, hook.into_owned()),
            ];
            if !agent.is_empty() {
                attrs.push(KeyValue::new(sc::GEN_AI_AGENT_NAME, agent.to_owned()));
            }
            self.decisions.add(n, &attrs);
        }
    }

    /// What application and budget events feed: tokens, cost, latencies, budget use.
    fn on_other(&self, agent: &str, detail: &EventDetail) {
        match detail {
            EventDetail::App(crate::events::AppEvent::ModelCall {
                input_tokens,
                output_tokens,
                cost_usd,
                queue_ms,
                model_ms,
                ..
            }) => {
                self.record_tokens(agent, *input_tokens, *output_tokens);
                self.record_cost(agent, *cost_usd);
                if let Some(q) = queue_ms {
                    self.record_latency("model_queue", q / 1e3);
                }
                if let Some(m) = model_ms {
                    self.record_latency("model", m / 1e3);
                }
            }
            EventDetail::App(crate::events::AppEvent::ToolCall {
                latency_ms: Some(t),
                ..
            }) => self.record_latency("tool", t / 1e3),
            EventDetail::Budget(b) => self.record_budget(agent, &b.budget, b.value),
            _ => {}
        }
    }

    /// Records a latency (`queueing`, `model` or `tool`), in seconds.
    pub fn record_latency(&self, kind: &'static str, seconds: f64) {
        self.latency
            .record(seconds, &[KeyValue::new(sc::LATENCY_KIND, kind)]);
    }

    /// Records an agent's model call's token usage.
    pub fn record_tokens(&self, agent: &str, input: u64, output: u64) {
        for (kind, n) in [("input", input), ("output", output)] {
            self.tokens.record(
                n,
                &[
                    KeyValue::new(sc::GEN_AI_AGENT_NAME, agent.to_owned()),
                    KeyValue::new(sc::GEN_AI_TOKEN_TYPE, kind),
                ],
            );
        }
    }

    /// Records the cost of an agent's model usage.
    pub fn record_cost(&self, agent: &str, amount: f64) {
        self.cost.add(
            amount,
            &[KeyValue::new(sc::GEN_AI_AGENT_NAME, agent.to_owned())],
        );
    }

    /// Records use of one of an agent's budgets.
    pub fn record_budget(&self, agent: &str, budget: &str, amount: f64) {
        self.budget.add(
            amount,
            &[
                KeyValue::new(sc::GEN_AI_AGENT_NAME, agent.to_owned()),
                KeyValue::new(sc::BUDGET, budget.to_owned()),
            ],
        );
    }
}
