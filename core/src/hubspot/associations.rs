//! HubSpot v4 associations: which links go in which request.
//!
//! Unlabelled links go to `batch/associate/default`, labelled ones to `batch/create`,
//! removals to `batch/archive`, at most 1,000 links a request. Everything else (pacing,
//! pauses, blame, secret masking, the request log) is the adapter's one send path, as for
//! objects; `attribution` knows links by both their objects' ids.

use super::attribution::{Name, Op};
use super::{models, path_segment, HubspotAdapter};
use crate::adapter::{Link, Outcome, Report, ReportBuilder};

/// HubSpot's cap on v4 batch reads since 2025-02; associate and create are documented
/// higher by some, 1,000 is safe for all three endpoints.
const MAX_INPUTS: usize = 1000;

pub(super) fn associate(
    adapter: &mut HubspotAdapter,
    from_type: &str,
    to_type: &str,
    links: &[Link],
) -> Report {
    let mut report = ReportBuilder::new(links.iter().map(|l| l.key.as_str()));
    let mut unlabelled = Vec::new();
    let mut labelled = Vec::new();
    for (i, link) in links.iter().enumerate() {
        if let Some(side) = missing_id(link) {
            // HubSpot would refuse the whole batch for it.
            let error = format!("the link has no {side} object id");
            report.set(i, Outcome::Failed { error });
        } else if link.label.is_none() {
            unlabelled.push(i);
        } else {
            labelled.push(i);
        }
    }
    let types = (from_type, to_type);
    let (op, body) = (Op::AssociateDefault, models::associate_default_body);
    send_links(adapter, &mut report, types, op, links, &unlabelled, body);
    let (op, body) = (Op::AssociateLabelled, models::associate_labelled_body);
    send_links(adapter, &mut report, types, op, links, &labelled, body);
    report.finish()
}

pub(super) fn dissociate(
    adapter: &mut HubspotAdapter,
    from_type: &str,
    to_type: &str,
    links: &[Link],
) -> Report {
    let mut report = ReportBuilder::new(links.iter().map(|l| l.key.as_str()));
    let mut sendable = Vec::new();
    for (i, link) in links.iter().enumerate() {
        if missing_id(link).is_some() {
            // No object, no association: there is nothing to remove.
            report.set(i, Outcome::Deleted);
        } else {
            sendable.push(i);
        }
    }
    let (op, body) = (Op::Dissociate, models::dissociate_body);
    send_links(
        adapter,
        &mut report,
        (from_type, to_type),
        op,
        links,
        &sendable,
        body,
    );
    report.finish()
}

fn missing_id(link: &Link) -> Option<&'static str> {
    if link.from_id.trim().is_empty() {
        Some("from")
    } else if link.to_id.trim().is_empty() {
        Some("to")
    } else {
        None
    }
}

/// Sends the links at `indices` in requests of at most [`MAX_INPUTS`].
fn send_links(
    adapter: &mut HubspotAdapter,
    report: &mut ReportBuilder,
    (from_type, to_type): (&str, &str),
    op: Op,
    links: &[Link],
    indices: &[usize],
    body: impl Fn(&[&Link]) -> Vec<u8>,
) {
    let url = format!(
        "{}/crm/v4/associations/{}/{}/{}",
        adapter.base_url,
        path_segment(from_type),
        path_segment(to_type),
        op.endpoint()
    );
    for chunk in indices.chunks(MAX_INPUTS) {
        let batch: Vec<&Link> = chunk.iter().map(|&i| &links[i]).collect();
        let names: Vec<Name> = batch
            .iter()
            .map(|l| Name::Link {
                from: &l.from_id,
                to: &l.to_id,
            })
            .collect();
        adapter.send(report, &url, op, chunk, &names, body(&batch));
    }
}
