//! The in-memory object store: per object type, objects by numeric id plus unique-value
//! indexes (contacts' `email` always; any other property once it has been used as an
//! `idProperty`, because HubSpot only allows unique properties there).

use crate::association_store::{canonical_type, Associations};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// Ids start here so they look like HubSpot's (numeric, not small) without being real ones.
pub const FIRST_ID: u64 = 1_000_001;

/// Properties every object carries, computed from the object's own fields rather than stored
/// (saves an allocation per write, and clients can't overwrite them).
pub const SYSTEM_PROPS: [&str; 4] = [
    "createdate",
    "hs_lastmodifieddate",
    "hs_object_id",
    "lastmodifieddate",
];

pub fn is_system_prop(name: &str) -> bool {
    SYSTEM_PROPS.contains(&name)
}

/// Property writes: `None` clears the property.
pub type Changes = Vec<(String, Option<String>)>;

#[derive(Debug, Clone)]
pub struct Obj {
    pub id: u64,
    pub props: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived_ms: Option<i64>,
}

impl Obj {
    pub fn is_live(&self) -> bool {
        self.archived_ms.is_none()
    }

    /// A property's value, including the computed system ones.
    pub fn prop(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "hs_object_id" => Some(Cow::Owned(self.id.to_string())),
            "createdate" => Some(Cow::Owned(crate::clock::iso(self.created_ms))),
            "lastmodifieddate" | "hs_lastmodifieddate" => {
                Some(Cow::Owned(crate::clock::iso(self.updated_ms)))
            }
            _ => self.props.get(name).map(|v| Cow::Borrowed(v.as_str())),
        }
    }
}

/// Unique-index key for a value: email is case-insensitive in HubSpot, everything else exact.
pub fn unique_key<'a>(prop: &str, value: &'a str) -> Cow<'a, str> {
    if prop == "email" && value.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(value.to_ascii_lowercase())
    } else {
        Cow::Borrowed(value)
    }
}

/// A write would give a unique property a value another live object already has.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub existing_id: u64,
}

#[derive(Debug, Default)]
pub struct TypeStore {
    /// BTreeMap so listings come out sorted by id for free.
    pub objects: BTreeMap<u64, Obj>,
    /// prop -> (unique key -> live object id)
    unique: HashMap<String, HashMap<String, u64>>,
    pub live: usize,
}

impl TypeStore {
    fn new(object_type: &str) -> Self {
        let mut s = TypeStore::default();
        if object_type == "contacts" {
            s.unique.insert("email".to_owned(), HashMap::new());
        }
        s
    }

    /// Starts treating `prop` as unique; built from the live objects on first use.
    pub fn ensure_unique(&mut self, prop: &str) {
        if prop == "hs_object_id" || self.unique.contains_key(prop) {
            return;
        }
        let mut idx = HashMap::new();
        for o in self.objects.values().filter(|o| o.is_live()) {
            if let Some(v) = o.props.get(prop) {
                idx.entry(unique_key(prop, v).into_owned()).or_insert(o.id);
            }
        }
        self.unique.insert(prop.to_owned(), idx);
    }

    pub fn is_unique(&self, prop: &str) -> bool {
        self.unique.contains_key(prop)
    }

    /// Finds a live object by crm id (`id_prop` None or `hs_object_id`) or by a unique
    /// property value. Callers must have called `ensure_unique(prop)` first.
    pub fn find(&self, id_prop: Option<&str>, value: &str) -> Option<u64> {
        match id_prop {
            None | Some("hs_object_id") => {
                let id = value.trim().parse::<u64>().ok()?;
                self.objects.get(&id).filter(|o| o.is_live()).map(|o| o.id)
            }
            Some(p) => self
                .unique
                .get(p)?
                .get(unique_key(p, value).as_ref())
                .copied(),
        }
    }

    /// Finds an archived object by crm id (reads with `archived=true`).
    pub fn find_archived(&self, value: &str) -> Option<u64> {
        let id = value.trim().parse::<u64>().ok()?;
        self.objects.get(&id).filter(|o| !o.is_live()).map(|o| o.id)
    }

    pub fn get(&self, id: u64) -> Option<&Obj> {
        self.objects.get(&id)
    }

    /// First unique-property collision the writes would cause for object `self_id`.
    pub fn conflict(&self, self_id: Option<u64>, changes: &Changes) -> Option<Conflict> {
        for (prop, value) in changes {
            let (Some(idx), Some(v)) = (self.unique.get(prop), value) else {
                continue;
            };
            if let Some(&other) = idx.get(unique_key(prop, v).as_ref()) {
                if Some(other) != self_id {
                    return Some(Conflict { existing_id: other });
                }
            }
        }
        None
    }

    fn insert(&mut self, id: u64, changes: Changes, now_ms: i64) {
        let mut props = BTreeMap::new();
        for (k, v) in changes {
            if let Some(v) = v {
                if let Some(idx) = self.unique.get_mut(&k) {
                    idx.insert(unique_key(&k, &v).into_owned(), id);
                }
                props.insert(k, v);
            }
        }
        self.objects.insert(
            id,
            Obj {
                id,
                props,
                created_ms: now_ms,
                updated_ms: now_ms,
                archived_ms: None,
            },
        );
        self.live += 1;
    }

    /// Applies writes to a live object. Conflicts must have been checked by the caller.
    pub fn update(&mut self, id: u64, changes: Changes, now_ms: i64) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        for (k, v) in changes {
            if let Some(idx) = self.unique.get_mut(&k) {
                if let Some(old) = obj.props.get(&k) {
                    let old_key = unique_key(&k, old);
                    if idx.get(old_key.as_ref()) == Some(&id) {
                        idx.remove(old_key.as_ref());
                    }
                }
                if let Some(v) = &v {
                    idx.insert(unique_key(&k, v).into_owned(), id);
                }
            }
            match v {
                Some(v) => {
                    obj.props.insert(k, v);
                }
                None => {
                    obj.props.remove(&k);
                }
            }
        }
        obj.updated_ms = now_ms;
    }

    /// Archives a live object; archived objects free their unique values (HubSpot lets a new
    /// contact reuse a deleted contact's email). Returns false if it was not live. Only
    /// through [`Store::archive`], which also drops the object's associations.
    fn archive(&mut self, id: u64, now_ms: i64) -> bool {
        let Some(obj) = self.objects.get_mut(&id) else {
            return false;
        };
        if !obj.is_live() {
            return false;
        }
        for (prop, idx) in self.unique.iter_mut() {
            if let Some(v) = obj.props.get(prop) {
                let key = unique_key(prop, v);
                if idx.get(key.as_ref()) == Some(&id) {
                    idx.remove(key.as_ref());
                }
            }
        }
        obj.archived_ms = Some(now_ms);
        obj.updated_ms = now_ms;
        self.live -= 1;
        true
    }

    pub fn archived_count(&self) -> usize {
        self.objects.len() - self.live
    }
}

#[derive(Debug)]
pub struct Store {
    pub types: HashMap<String, TypeStore>,
    pub associations: Associations,
    next_id: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            types: HashMap::new(),
            associations: Associations::default(),
            next_id: FIRST_ID,
        }
    }
}

impl Store {
    pub fn type_mut(&mut self, object_type: &str) -> &mut TypeStore {
        if !self.types.contains_key(object_type) {
            self.types
                .insert(object_type.to_owned(), TypeStore::new(object_type));
        }
        self.types.get_mut(object_type).expect("just inserted")
    }

    /// Creates an object; returns its id. Conflicts must have been checked by the caller.
    /// Ids come from one counter shared by all types (like a HubSpot portal's).
    pub fn create(&mut self, object_type: &str, changes: Changes, now_ms: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.type_mut(object_type).insert(id, changes, now_ms);
        id
    }

    /// Archives a live object and drops its associations, as HubSpot does. Returns false
    /// if it was not live.
    pub fn archive(&mut self, object_type: &str, id: u64, now_ms: i64) -> bool {
        if !self.type_mut(object_type).archive(id, now_ms) {
            return false;
        }
        let key = (canonical_type(object_type).into_owned(), id);
        self.associations.remove_object(&key);
        true
    }

    /// Drops every object and association but keeps the id counter going, so a crm id
    /// remembered from before a reset can never silently alias a new object.
    pub fn clear(&mut self) {
        self.types.clear();
        self.associations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(pairs: &[(&str, Option<&str>)]) -> Changes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn email_index_tracks_updates_and_archive() {
        let mut s = Store::default();
        let a = s.create("contacts", ch(&[("email", Some("a@x.io"))]), 1);
        let t = s.type_mut("contacts");
        assert_eq!(t.find(Some("email"), "A@X.IO"), Some(a));
        assert!(t
            .conflict(None, &ch(&[("email", Some("a@x.io"))]))
            .is_some());
        assert!(t
            .conflict(Some(a), &ch(&[("email", Some("a@x.io"))]))
            .is_none());
        t.update(a, ch(&[("email", Some("b@x.io"))]), 2);
        assert_eq!(t.find(Some("email"), "a@x.io"), None);
        assert_eq!(t.find(Some("email"), "b@x.io"), Some(a));
        assert!(t.archive(a, 3));
        assert_eq!(t.find(Some("email"), "b@x.io"), None);
        assert_eq!(t.find(None, &a.to_string()), None);
        assert_eq!(t.find_archived(&a.to_string()), Some(a));
        assert_eq!((t.live, t.archived_count()), (0, 1));
    }

    #[test]
    fn lazily_indexed_id_property() {
        let mut s = Store::default();
        let a = s.create("companies", ch(&[("domain", Some("x.io"))]), 1);
        let t = s.type_mut("companies");
        t.ensure_unique("domain");
        assert_eq!(t.find(Some("domain"), "x.io"), Some(a));
        assert_eq!(t.find(Some("domain"), "X.io"), None);
    }
}
