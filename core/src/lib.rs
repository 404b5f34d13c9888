//! etlify's pure logic, testable with `cargo test -p etlify-core` and no Postgres:
//! payload digests, the send plan, each CRM's request budget, and the CRM adapters with the one HTTP client
//! they share.

pub mod adapter;
pub mod digest;
pub mod http;
pub mod links;
pub mod plan;

mod config;
mod hubspot;
mod null;
