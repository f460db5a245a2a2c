//! Who hears an update, and what it says to them.
//!
//! During an outage a carrier tells consumers, business customers, employees and
//! regulators different things, at different moments, on different channels, all
//! consistent with the same update. [`route`] decides which targets (and which of
//! their audiences) get an update; [`templates`] turns the update into each
//! channel's words, per target, audience and locale.
//!
//! This crate is pure: it never reads files, the clock, Kafka or the network. The
//! daemon reads the template directory and hands over the contents, so that routing
//! and rendering are deterministic, testable, and identical on every retry.

pub mod route;
pub mod templates;

pub use route::{Decision, Rule, UpdateKind, route};
pub use templates::{
    ChannelKind, MAX_SUBJECT_CHARS, Message, PRESETS, Part, RenderContext, Rendered,
    TargetTemplates, TemplateError, TemplateProblem, TemplateSet, TemplatesConfig, html_escape,
};
