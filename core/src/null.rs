//! The null adapter: accepts everything, sends nothing. For trying etlify out and for
//! measuring the extension's own overhead without a CRM in the way.

use crate::adapter::{batch_size, CrmAdapter, CrmSettings, Delete, Link, Outcome, Report, Upsert};
use crate::config::AdapterConfig;

/// No requests are made, so the batch is only bounded by what the worker handles well.
const MAX_BATCH: usize = 100;

pub(crate) struct NullAdapter {
    batch_size: usize,
}

impl NullAdapter {
    pub(crate) fn parse_config(config: &serde_json::Value) -> Result<(), String> {
        AdapterConfig::new("null", config, &[]).map(drop)
    }

    pub(crate) fn new(settings: &CrmSettings) -> Result<Self, String> {
        Self::parse_config(&settings.config)?;
        Ok(NullAdapter {
            batch_size: batch_size(settings.batch_size, MAX_BATCH)?,
        })
    }
}

impl CrmAdapter for NullAdapter {
    fn max_batch_size(&self) -> usize {
        self.batch_size
    }

    fn upsert(&mut self, _object_type: &str, _id_property: &str, items: &[Upsert]) -> Report {
        Report {
            outcomes: items
                .iter()
                .map(|item| {
                    let crm_id = format!("null:{}", item.key);
                    (item.key.clone(), Outcome::Synced { crm_id })
                })
                .collect(),
            ..Report::default()
        }
    }

    fn delete(&mut self, _object_type: &str, items: &[Delete]) -> Report {
        Report {
            outcomes: items
                .iter()
                .map(|item| (item.key.clone(), Outcome::Deleted))
                .collect(),
            ..Report::default()
        }
    }

    fn associate(&mut self, _from_type: &str, _to_type: &str, links: &[Link]) -> Report {
        Report {
            outcomes: links
                .iter()
                .map(|l| {
                    let crm_id = l.to_id.clone();
                    (l.key.clone(), Outcome::Synced { crm_id })
                })
                .collect(),
            ..Report::default()
        }
    }

    fn dissociate(&mut self, _from_type: &str, _to_type: &str, links: &[Link]) -> Report {
        Report {
            outcomes: links
                .iter()
                .map(|l| (l.key.clone(), Outcome::Deleted))
                .collect(),
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_and_deleted_without_requests() {
        let settings = CrmSettings {
            adapter: "null".into(),
            config: serde_json::json!({}),
            secret: None,
            batch_size: Some(7),
        };
        let mut a = NullAdapter::new(&settings).unwrap();
        assert_eq!(a.max_batch_size(), 7);
        let items = [Upsert {
            key: "42".into(),
            crm_id: None,
            id_value: "a@b.c".into(),
            properties: Default::default(),
        }];
        let r = a.upsert("contacts", "email", &items);
        assert_eq!(
            r.outcomes,
            vec![(
                "42".into(),
                Outcome::Synced {
                    crm_id: "null:42".into()
                }
            )]
        );
        assert!(r.requests.is_empty() && r.pause.is_none());
        let r = a.delete(
            "contacts",
            &[Delete {
                key: "42".into(),
                crm_id: "null:42".into(),
            }],
        );
        assert_eq!(r.outcomes, vec![("42".into(), Outcome::Deleted)]);
        assert!(r.requests.is_empty());
        // It keeps nothing, so a lost answer left nothing behind: the trait's default.
        let find = crate::adapter::Find {
            key: "42".into(),
            id_value: "a@b.c".into(),
        };
        let r = a.find("contacts", "email", &[find]);
        assert_eq!(r.outcomes, vec![("42".into(), Outcome::Deleted)]);
        assert!(r.requests.is_empty());
    }
}
