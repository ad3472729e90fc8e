//! relay-playbooks: response playbooks. For each new alert version, decide which
//! playbooks act on which devices it names ([`Decider`], pure matching in [`matches()`]),
//! journal each decision once in the state store together with its audit event
//! ([`audit`]), and carry out what was decided ([`Executor`]: the Defender for Endpoint
//! machine action, followed to its end, inside the machine-action quota).
//!
//! Nothing here polls or formats for a SIEM: the pipeline hands alerts in and commits what
//! [`Decider::decide`] returns with the alert's page; sinks deliver the audit events as
//! stream `actions`.

pub mod audit;
mod decide;
mod executor;
mod facts;

pub use audit::{Extra, Outcome};
pub use decide::{api_option, matches, AlertRef, Decider};
pub use executor::{Executor, ExecutorStats, TenantInfo};
pub use facts::{AlertFacts, Device};
