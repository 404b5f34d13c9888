//! Associations between objects, kept the way HubSpot models them: one undirected record
//! per pair of objects, holding the association types of each direction. Creating
//! deal→company 341 is the same fact as company→deal 342, so it is stored once and read
//! from either side.
//!
//! Objects are named by canonical type (see [`canonical_type`]) and id. The store knows
//! the HUBSPOT_DEFINED types the reference lists (contacts, companies, deals); for any other
//! pair or category a type is its own inverse, which is what HubSpot does for unpaired
//! labels.

use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

/// `associationCategory`: who defined the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Category {
    #[serde(rename = "HUBSPOT_DEFINED")]
    Hubspot,
    #[serde(rename = "USER_DEFINED")]
    User,
    #[serde(rename = "INTEGRATOR_DEFINED")]
    Integrator,
}

impl Category {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HUBSPOT_DEFINED" => Some(Category::Hubspot),
            "USER_DEFINED" => Some(Category::User),
            "INTEGRATOR_DEFINED" => Some(Category::Integrator),
            _ => None,
        }
    }
}

/// Serialized as the admin endpoint shows it, `{"category", "type_id"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AssocType {
    pub category: Category,
    pub type_id: i64,
}

impl AssocType {
    pub fn hubspot(type_id: i64) -> Self {
        AssocType {
            category: Category::Hubspot,
            type_id,
        }
    }
}

/// One HUBSPOT_DEFINED direction, as `shared/reference/CRM-APIS.md` lists them.
struct Defined {
    from: &'static str,
    to: &'static str,
    /// What `associate/default` creates.
    unlabeled: i64,
    /// The "primary" label of this direction, if it has one.
    primary: Option<i64>,
    /// A `from` object has at most one primary `to` (a contact's or a deal's primary
    /// company): setting a new one demotes the old one.
    primary_is_unique: bool,
}

const DEFINED: [Defined; 6] = [
    Defined {
        from: "contacts",
        to: "companies",
        unlabeled: 279,
        primary: Some(1),
        primary_is_unique: true,
    },
    Defined {
        from: "companies",
        to: "contacts",
        unlabeled: 280,
        primary: Some(2),
        primary_is_unique: false,
    },
    Defined {
        from: "deals",
        to: "companies",
        unlabeled: 341,
        primary: Some(5),
        primary_is_unique: true,
    },
    Defined {
        from: "companies",
        to: "deals",
        unlabeled: 342,
        primary: Some(6),
        primary_is_unique: false,
    },
    Defined {
        from: "deals",
        to: "contacts",
        unlabeled: 3,
        primary: None,
        primary_is_unique: false,
    },
    Defined {
        from: "contacts",
        to: "deals",
        unlabeled: 4,
        primary: None,
        primary_is_unique: false,
    },
];

fn defined(from: &str, to: &str) -> Option<&'static Defined> {
    DEFINED.iter().find(|d| d.from == from && d.to == to)
}

/// The store's name for an object type: v4 paths accept `contact`, `contacts` and `0-1`
/// for the same thing. Custom types keep their name.
pub fn canonical_type(t: &str) -> Cow<'_, str> {
    let standard = match t.to_ascii_lowercase().as_str() {
        "contact" | "contacts" | "0-1" => "contacts",
        "company" | "companies" | "0-2" => "companies",
        "deal" | "deals" | "0-3" => "deals",
        "ticket" | "tickets" | "0-5" => "tickets",
        _ => return Cow::Borrowed(t),
    };
    Cow::Borrowed(standard)
}

/// Types HubSpot knows without any object existing (custom ones are known once they hold
/// objects).
pub fn is_standard_type(canonical: &str) -> bool {
    matches!(canonical, "contacts" | "companies" | "deals" | "tickets")
}

/// The type `associate/default` creates for `from` → `to` (canonical names), if the mock
/// knows it.
pub fn default_type(from: &str, to: &str) -> Option<AssocType> {
    defined(from, to).map(|d| AssocType::hubspot(d.unlabeled))
}

/// Err(message) when a HUBSPOT_DEFINED id does not belong to this direction; other
/// categories and pairs the mock has no table for are taken on trust.
pub fn check_type(from: &str, to: &str, t: AssocType) -> Result<(), String> {
    let Some(d) = defined(from, to).filter(|_| t.category == Category::Hubspot) else {
        return Ok(());
    };
    if t.type_id == d.unlabeled || Some(t.type_id) == d.primary {
        return Ok(());
    }
    Err(format!(
        "associationTypeId {} is not a HUBSPOT_DEFINED association type from {from} to {to}",
        t.type_id
    ))
}

/// The same association read from the other side.
fn inverse(from: &str, to: &str, t: AssocType) -> AssocType {
    let (Some(there), Some(back)) = (defined(from, to), defined(to, from)) else {
        return t;
    };
    if t.category != Category::Hubspot {
        return t;
    }
    if t.type_id == there.unlabeled {
        AssocType::hubspot(back.unlabeled)
    } else if Some(t.type_id) == there.primary {
        back.primary.map_or(t, AssocType::hubspot)
    } else {
        t
    }
}

/// "Primary" for the HUBSPOT_DEFINED primary labels, as HubSpot's reads name them.
pub fn label(from: &str, to: &str, t: AssocType) -> Option<&'static str> {
    let d = defined(from, to)?;
    (t.category == Category::Hubspot && Some(t.type_id) == d.primary).then_some("Primary")
}

/// An object: canonical type and id.
pub type ObjKey = (String, u64);

/// Types per direction; `lo`/`hi` are the pair's two objects in key order.
#[derive(Debug, Default)]
struct Pair {
    lo_to_hi: BTreeSet<AssocType>,
    hi_to_lo: BTreeSet<AssocType>,
}

#[derive(Debug, Default)]
pub struct Associations {
    /// Keyed `(lo, hi)` with `lo <= hi`.
    pairs: HashMap<(ObjKey, ObjKey), Pair>,
    /// Each object's partners, so reads and archiving don't scan every pair.
    partners: HashMap<ObjKey, BTreeSet<ObjKey>>,
}

impl Associations {
    pub fn clear(&mut self) {
        self.pairs.clear();
        self.partners.clear();
    }

    /// The types of `from` → `to` (empty when the two are not associated).
    pub fn types(&self, from: &ObjKey, to: &ObjKey) -> BTreeSet<AssocType> {
        let (key, forward) = pair_key(from, to);
        match self.pairs.get(&key) {
            Some(p) if forward => p.lo_to_hi.clone(),
            Some(p) => p.hi_to_lo.clone(),
            None => BTreeSet::new(),
        }
    }

    /// Adds `t` from → `to` (and its inverse the other way). A labelled association is
    /// also an associated one: HubSpot adds the unlabeled type alongside a label.
    pub fn add(&mut self, from: &ObjKey, to: &ObjKey, t: AssocType) {
        let mut types = vec![t];
        if let Some(d) = default_type(&from.0, &to.0).filter(|d| *d != t) {
            types.push(d);
        }
        for t in types {
            self.insert(from, to, t);
            self.insert(to, from, inverse(&from.0, &to.0, t));
        }
        self.demote_other_primaries(from, to, t);
    }

    fn insert(&mut self, from: &ObjKey, to: &ObjKey, t: AssocType) {
        let (key, forward) = pair_key(from, to);
        let pair = self.pairs.entry(key).or_default();
        if forward {
            pair.lo_to_hi.insert(t);
        } else {
            pair.hi_to_lo.insert(t);
        }
        self.partners
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
        self.partners
            .entry(to.clone())
            .or_default()
            .insert(from.clone());
    }

    /// A contact (deal) has one primary company: whichever side `t` makes primary, the
    /// owner's other companies lose the label (they stay associated).
    fn demote_other_primaries(&mut self, from: &ObjKey, to: &ObjKey, t: AssocType) {
        let back = inverse(&from.0, &to.0, t);
        let (owner, primary_of) = if is_unique_primary(&from.0, &to.0, t) {
            (from, to)
        } else if is_unique_primary(&to.0, &from.0, back) {
            (to, from)
        } else {
            return;
        };
        let label = if owner == from { t } else { back };
        let others: Vec<ObjKey> = self
            .partners
            .get(owner)
            .into_iter()
            .flatten()
            .filter(|p| p.0 == primary_of.0 && *p != primary_of)
            .cloned()
            .collect();
        for other in others {
            let (key, forward) = pair_key(owner, &other);
            if let Some(pair) = self.pairs.get_mut(&key) {
                let (there, back_set) = if forward {
                    (&mut pair.lo_to_hi, &mut pair.hi_to_lo)
                } else {
                    (&mut pair.hi_to_lo, &mut pair.lo_to_hi)
                };
                there.remove(&label);
                back_set.remove(&inverse(&owner.0, &other.0, label));
            }
        }
    }

    /// Removes every association between `a` and `b`; false if there was none.
    pub fn remove_pair(&mut self, a: &ObjKey, b: &ObjKey) -> bool {
        let (key, _) = pair_key(a, b);
        if self.pairs.remove(&key).is_none() {
            return false;
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(set) = self.partners.get_mut(x) {
                set.remove(y);
                if set.is_empty() {
                    self.partners.remove(x);
                }
            }
        }
        true
    }

    /// An archived object keeps no associations (HubSpot drops them).
    pub fn remove_object(&mut self, obj: &ObjKey) {
        let partners: Vec<ObjKey> = self
            .partners
            .get(obj)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for p in partners {
            self.remove_pair(obj, &p);
        }
    }

    /// `from`'s partners of type `to_type` with the types from `from`'s side, by id.
    pub fn of(&self, from: &ObjKey, to_type: &str) -> Vec<(u64, BTreeSet<AssocType>)> {
        self.partners
            .get(from)
            .into_iter()
            .flatten()
            .filter(|p| p.0 == to_type)
            .map(|p| (p.1, self.types(from, p)))
            .filter(|(_, types)| !types.is_empty())
            .collect()
    }

    /// Every association `from_type` → `to_type`, sorted by (from id, to id).
    pub fn all(&self, from_type: &str, to_type: &str) -> Vec<(u64, u64, BTreeSet<AssocType>)> {
        let mut out: Vec<_> = self
            .partners
            .keys()
            .filter(|k| k.0 == from_type)
            .flat_map(|k| {
                self.of(k, to_type)
                    .into_iter()
                    .map(move |(to, types)| (k.1, to, types))
            })
            .collect();
        out.sort_by_key(|(from, to, _)| (*from, *to));
        out
    }
}

fn is_unique_primary(from: &str, to: &str, t: AssocType) -> bool {
    defined(from, to).is_some_and(|d| {
        d.primary_is_unique && t.category == Category::Hubspot && Some(t.type_id) == d.primary
    })
}

/// The pair's key and whether `from` is its `lo` end.
fn pair_key(from: &ObjKey, to: &ObjKey) -> ((ObjKey, ObjKey), bool) {
    if from <= to {
        ((from.clone(), to.clone()), true)
    } else {
        ((to.clone(), from.clone()), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str, id: u64) -> ObjKey {
        (t.to_owned(), id)
    }

    fn ids(set: &BTreeSet<AssocType>) -> Vec<i64> {
        set.iter().map(|t| t.type_id).collect()
    }

    #[test]
    fn one_record_read_from_both_sides() {
        let mut a = Associations::default();
        let (deal, company) = (k("deals", 7), k("companies", 3));
        a.add(&deal, &company, AssocType::hubspot(341));
        assert_eq!(ids(&a.types(&deal, &company)), [341]);
        assert_eq!(ids(&a.types(&company, &deal)), [342]);
        assert_eq!(a.pairs.len(), 1);
        // A label comes with the unlabeled type, both ways.
        a.add(&deal, &company, AssocType::hubspot(5));
        assert_eq!(ids(&a.types(&deal, &company)), [5, 341]);
        assert_eq!(ids(&a.types(&company, &deal)), [6, 342]);
        assert!(a.remove_pair(&company, &deal));
        assert!(a.types(&deal, &company).is_empty());
        assert!(a.partners.is_empty());
        assert!(!a.remove_pair(&company, &deal));
    }

    #[test]
    fn a_new_primary_demotes_the_old_one() {
        let mut a = Associations::default();
        let (deal, c1, c2) = (k("deals", 1), k("companies", 2), k("companies", 3));
        a.add(&deal, &c1, AssocType::hubspot(5));
        // Set from the company's side this time.
        a.add(&c2, &deal, AssocType::hubspot(6));
        assert_eq!(ids(&a.types(&deal, &c1)), [341]);
        assert_eq!(ids(&a.types(&deal, &c2)), [5, 341]);
        assert_eq!(ids(&a.types(&c1, &deal)), [342]);
        // A company can be primary for many deals.
        let d2 = k("deals", 4);
        a.add(&d2, &c2, AssocType::hubspot(5));
        assert_eq!(ids(&a.types(&deal, &c2)), [5, 341]);
    }

    #[test]
    fn archiving_an_object_drops_its_pairs() {
        let mut a = Associations::default();
        let (contact, c1, c2) = (k("contacts", 1), k("companies", 2), k("companies", 3));
        a.add(&contact, &c1, AssocType::hubspot(279));
        a.add(&c2, &contact, AssocType::hubspot(280));
        assert_eq!(
            a.all("contacts", "companies")
                .iter()
                .map(|(f, t, types)| (*f, *t, ids(types)))
                .collect::<Vec<_>>(),
            [(1, 2, vec![279]), (1, 3, vec![279])]
        );
        a.remove_object(&contact);
        assert!(a.pairs.is_empty() && a.partners.is_empty());
    }

    #[test]
    fn other_categories_are_their_own_inverse() {
        let mut a = Associations::default();
        let (x, y) = (k("p1_cars", 1), k("p1_cars", 2));
        let t = AssocType {
            category: Category::User,
            type_id: 77,
        };
        a.add(&x, &y, t);
        assert_eq!(a.types(&y, &x).into_iter().collect::<Vec<_>>(), [t]);
        assert_eq!(default_type("p1_cars", "p1_cars"), None);
    }

    #[test]
    fn type_checks_and_names() {
        assert!(check_type("deals", "companies", AssocType::hubspot(5)).is_ok());
        assert!(check_type("deals", "companies", AssocType::hubspot(279)).is_err());
        assert!(check_type("p1_cars", "companies", AssocType::hubspot(279)).is_ok());
        assert_eq!(canonical_type("CONTACT"), "contacts");
        assert_eq!(canonical_type("0-3"), "deals");
        assert_eq!(canonical_type("p1_cars"), "p1_cars");
        assert_eq!(
            label("contacts", "companies", AssocType::hubspot(1)),
            Some("Primary")
        );
        assert_eq!(
            label("contacts", "companies", AssocType::hubspot(279)),
            None
        );
    }
}
