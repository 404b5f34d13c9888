//! JSON rendering of objects straight from the store (borrowing, no intermediate `Value`s),
//! because batch responses of 100 full objects are the hot path.

use crate::clock::Iso;
use crate::state::{Obj, SYSTEM_PROPS};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt::Display;

/// Serializes any `Display` as a JSON string without allocating.
struct Str<T: Display>(T);

impl<T: Display> Serialize for Str<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A computed system property value (enum rather than a boxed `Display` to avoid allocating).
enum SysVal {
    Id(u64),
    Time(i64),
}

impl Display for SysVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysVal::Id(id) => id.fmt(f),
            SysVal::Time(ms) => Iso(*ms).fmt(f),
        }
    }
}

fn system_value(obj: &Obj, name: &str) -> Option<Str<SysVal>> {
    match name {
        "hs_object_id" => Some(Str(SysVal::Id(obj.id))),
        "createdate" => Some(Str(SysVal::Time(obj.created_ms))),
        "lastmodifieddate" | "hs_lastmodifieddate" => Some(Str(SysVal::Time(obj.updated_ms))),
        _ => None,
    }
}

/// One object as HubSpot returns it. `props: None` renders every property; `Some(list)`
/// renders those (null when unset) plus the system ones, like a `properties=` read.
pub struct ObjView<'a> {
    pub obj: &'a Obj,
    pub props: Option<&'a [String]>,
    pub new: Option<bool>,
    pub trace: Option<&'a str>,
}

impl<'a> ObjView<'a> {
    pub fn full(obj: &'a Obj) -> Self {
        ObjView {
            obj,
            props: None,
            new: None,
            trace: None,
        }
    }
}

impl Serialize for ObjView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = self.obj;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &Str(o.id))?;
        m.serialize_entry(
            "properties",
            &PropsView {
                obj: o,
                only: self.props,
            },
        )?;
        m.serialize_entry("createdAt", &Str(Iso(o.created_ms)))?;
        m.serialize_entry("updatedAt", &Str(Iso(o.updated_ms)))?;
        m.serialize_entry("archived", &o.archived_ms.is_some())?;
        if let Some(at) = o.archived_ms {
            m.serialize_entry("archivedAt", &Str(Iso(at)))?;
        }
        if let Some(new) = self.new {
            m.serialize_entry("new", &new)?;
        }
        if let Some(t) = self.trace {
            m.serialize_entry("objectWriteTraceId", t)?;
        }
        m.end()
    }
}

struct PropsView<'a> {
    obj: &'a Obj,
    only: Option<&'a [String]>,
}

impl Serialize for PropsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = self.obj;
        let mut m = s.serialize_map(None)?;
        match self.only {
            None => {
                for name in SYSTEM_PROPS {
                    m.serialize_entry(name, &system_value(o, name))?;
                }
                for (k, v) in &o.props {
                    m.serialize_entry(k, v)?;
                }
            }
            Some(list) => {
                for (i, name) in list.iter().enumerate() {
                    // JSON objects must not repeat keys; a list may.
                    if list[..i].contains(name) {
                        continue;
                    }
                    match system_value(o, name) {
                        Some(v) => m.serialize_entry(name, &v)?,
                        None => m.serialize_entry(name, &o.props.get(name))?,
                    }
                }
                for name in ["createdate", "hs_object_id", "lastmodifieddate"] {
                    if !list.iter().any(|n| n == name) {
                        m.serialize_entry(name, &system_value(o, name))?;
                    }
                }
            }
        }
        m.end()
    }
}

/// `{"results":[...]}` for admin listings.
pub fn results_body<'a>(objs: impl Iterator<Item = &'a Obj>) -> Vec<u8> {
    struct Results<I>(std::cell::Cell<Option<I>>);
    impl<'a, I: Iterator<Item = &'a Obj>> Serialize for Results<I> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let it = self.0.take().expect("serialized once");
            s.collect_seq(it.map(ObjView::full))
        }
    }
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"results\":");
    serde_json::to_writer(&mut out, &Results(std::cell::Cell::new(Some(objs))))
        .expect("in-memory write");
    out.push(b'}');
    out
}
