//! etlify's pure logic, testable with `cargo test -p etlify-core` and no Postgres:
//! payload digests, the send plan, each CRM's request budget, the CRM adapters with
//! the one HTTP client they share, and the bisection that finds the records a CRM
//! refused a whole batch for.

pub mod adapter;
pub mod bisect;
pub mod digest;
pub mod http;
pub mod links;
pub mod plan;
pub mod unanswered;

mod config;
mod hubspot;
mod null;
