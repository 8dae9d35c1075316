//! Runtime control by the node operator (`/api/v10/admin/*`, `rest/admin.rs`, behind the
//! operator token): what can change without a restart, and where each change is kept.
//!
//! - Node-wide, in this process ([`Admin`]): the log filter ([`LogFilter`]), the REST rate
//!   limits (`ratelimit::Limits`, read afresh by every request) and the emergency kill switch
//!   for new voice joins (`joins_frozen`). A node's settings are its own; in a cluster each
//!   node is told separately.
//! - Per guild, shared by every node of a cluster: voice off, message creation frozen, a cap on
//!   speaker slots (`shared::guild_switches`, behind the local/Redis switch). [`gates`] is
//!   where the rest of the code asks them.
//!
//! Every change is logged at info (who, what, old, new) and counted in
//! `lodge_admin_changes_total{setting}`; every refusal a switch causes is counted in
//! `lodge_admin_refusals_total{switch}`; `/metrics` shows each switch's state
//! ([`write_metrics`]).

pub mod gates;
mod log_filter;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

pub use log_filter::{LogFilter, MAX_FILTER_LEN};

use crate::app::AppState;

/// What the operator can change, one name each (the `setting` and `switch` labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    LogFilter,
    RateLimitRoute,
    RateLimitGlobal,
    /// Node-wide: no new voice joins through this node.
    JoinsFrozen,
    VoiceOff,
    MessagesFrozen,
    MaxSlots,
}

impl Setting {
    pub const ALL: [Setting; 7] = [
        Setting::LogFilter,
        Setting::RateLimitRoute,
        Setting::RateLimitGlobal,
        Setting::JoinsFrozen,
        Setting::VoiceOff,
        Setting::MessagesFrozen,
        Setting::MaxSlots,
    ];

    /// The switches that refuse something (the others only change a figure).
    pub const SWITCHES: [Setting; 4] = [
        Setting::JoinsFrozen,
        Setting::VoiceOff,
        Setting::MessagesFrozen,
        Setting::MaxSlots,
    ];

    /// The name in the API's JSON, the logs and the metrics' labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::LogFilter => "log_filter",
            Setting::RateLimitRoute => "rate_limit_route",
            Setting::RateLimitGlobal => "rate_limit_global",
            Setting::JoinsFrozen => "joins_frozen",
            Setting::VoiceOff => "voice_off",
            Setting::MessagesFrozen => "messages_frozen",
            Setting::MaxSlots => "max_slots",
        }
    }

    fn index(self) -> usize {
        Setting::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every setting is in Setting::ALL")
    }
}

/// This node's side of runtime control.
#[derive(Default)]
pub struct Admin {
    /// The kill switch: op 4 joins (and moves) handled by this node are refused; calls in
    /// progress go on.
    joins_frozen: AtomicBool,
    /// Set by the binary once its logger is installed.
    pub log_filter: OnceLock<LogFilter>,
    changes: [AtomicU64; Setting::ALL.len()],
    refusals: [AtomicU64; Setting::ALL.len()],
}

impl Admin {
    pub fn joins_frozen(&self) -> bool {
        self.joins_frozen.load(Relaxed)
    }

    /// Throw the kill switch (or release it); returns the state it replaced.
    pub fn set_joins_frozen(&self, on: bool) -> bool {
        self.joins_frozen.swap(on, Relaxed)
    }

    /// Record a change: logged at info with who made it, and counted.
    pub fn changed(&self, who: &str, setting: Setting, scope: &str, old: &str, new: &str) {
        self.changes[setting.index()].fetch_add(1, Relaxed);
        tracing::info!(
            who,
            setting = setting.as_str(),
            scope,
            old,
            new,
            "admin change"
        );
    }

    /// Count a request a switch refused.
    pub fn refused(&self, switch: Setting) {
        self.refusals[switch.index()].fetch_add(1, Relaxed);
    }

    pub fn changes(&self, setting: Setting) -> u64 {
        self.changes[setting.index()].load(Relaxed)
    }
}

/// Largest number of guilds listed one by one in `/metrics` (the rest are only counted).
pub const MAX_GUILDS_IN_METRICS: usize = 50;

/// The admin part of `/metrics`: the node's settings, each switch's state, changes and
/// refusals.
pub async fn write_metrics(out: &mut String, s: &AppState) {
    let a = &s.admin;
    let _ = writeln!(out, "# HELP lodge_admin_joins_frozen The node-wide kill switch for new voice joins (1: thrown)\n# TYPE lodge_admin_joins_frozen gauge\nlodge_admin_joins_frozen {}", u8::from(a.joins_frozen()));
    let _ = writeln!(out, "# HELP lodge_admin_rate_limit REST rate limits in force (requests per window)\n# TYPE lodge_admin_rate_limit gauge\nlodge_admin_rate_limit{{limit=\"route\"}} {}\nlodge_admin_rate_limit{{limit=\"global\"}} {}", s.limits.route(), s.limits.global());
    let _ = writeln!(out, "# HELP lodge_admin_changes_total Changes made through this node's admin API, by setting\n# TYPE lodge_admin_changes_total counter");
    for st in Setting::ALL {
        let _ = writeln!(
            out,
            "lodge_admin_changes_total{{setting=\"{}\"}} {}",
            st.as_str(),
            a.changes(st)
        );
    }
    let _ = writeln!(out, "# HELP lodge_admin_refusals_total Requests this node refused because of an operator switch\n# TYPE lodge_admin_refusals_total counter");
    for st in Setting::SWITCHES {
        let _ = writeln!(
            out,
            "lodge_admin_refusals_total{{switch=\"{}\"}} {}",
            st.as_str(),
            a.refusals[st.index()].load(Relaxed)
        );
    }
    let all = match s.shared.guild_switches.all().await {
        Ok(all) => all,
        Err(e) => {
            let _ = writeln!(out, "# lodge_admin_guild_switches unavailable: {e}");
            return;
        }
    };
    let count = |f: fn(&crate::shared::guild_switches::GuildSwitches) -> bool| {
        all.iter().filter(|(_, g)| f(g)).count()
    };
    let _ = writeln!(out, "# HELP lodge_admin_guilds_switched Guilds with an operator switch on (cluster-wide), by switch\n# TYPE lodge_admin_guilds_switched gauge");
    for (name, n) in [
        ("voice_off", count(|g| g.voice_off)),
        ("messages_frozen", count(|g| g.messages_frozen)),
        ("max_slots", count(|g| g.max_slots.is_some())),
    ] {
        let _ = writeln!(out, "lodge_admin_guilds_switched{{switch=\"{name}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP lodge_admin_guild_switch An operator switch of one guild (1: on; max_slots: the cap), for the first {MAX_GUILDS_IN_METRICS} switched guilds by id\n# TYPE lodge_admin_guild_switch gauge");
    for (g, sw) in all.iter().take(MAX_GUILDS_IN_METRICS) {
        if sw.voice_off {
            let _ = writeln!(
                out,
                "lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"voice_off\"}} 1"
            );
        }
        if sw.messages_frozen {
            let _ = writeln!(
                out,
                "lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"messages_frozen\"}} 1"
            );
        }
        if let Some(n) = sw.max_slots {
            let _ = writeln!(
                out,
                "lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"max_slots\"}} {n}"
            );
        }
    }
}
