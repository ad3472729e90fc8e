//! The fields of a Defender document that the CEF mapping reads, deserialized in one pass
//! over the raw JSON: strings are borrowed from it where they have no escapes, and
//! everything else is skipped without being built. Building a `serde_json::Value` of the
//! whole ~6 KB document (a `String` per key and value, a map per object) was most of the
//! mapping's cost (docs/performance.md: 15 % of the CEF sink's CPU).
//!
//! What the mapping sees must be exactly what it saw when it read a `Value`, so every line
//! stays byte-identical (`differential.rs` runs both mappings):
//!
//! * Any JSON value is accepted anywhere: a field of the wrong type reads as absent (a
//!   number where text is expected is its JSON spelling, as `Value::Number` printed it).
//! * A key given twice keeps its last value, as `serde_json::Map` does.
//! * A document that `serde_json::from_str::<Value>` refuses reads as empty (the mapping
//!   then writes the envelope's fields only). `Value` refuses more than a `RawValue` does:
//!   lone UTF-16 surrogates in `\u` escapes, numbers beyond `f64`, nesting deeper than
//!   128 — also inside fields the mapping never reads. So skipped values go through
//!   `deserialize_any` with a visitor, like `Value`, not `IgnoredAny` (which accepts all
//!   three).
//! * An object whose first key is serde_json's private raw-value marker is, for `Value`,
//!   the JSON text in that key's string value; see [`RAW_VALUE_TOKEN`].

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;

/// The key serde_json (feature `raw_value`, on in this workspace) reserves for `RawValue`.
/// When it is the first key of an object, `Value` parses that key's value, which must be a
/// string, as a JSON text of its own and takes the result for the whole object (and fails
/// if the object has more keys). Defender's keys never look like this; a document that did
/// would still map as before.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Reads `raw` (valid JSON) into the mapping's fields; a document that `Value` would refuse
/// reads as empty.
pub(super) fn parse(raw: &str) -> Doc<'_> {
    serde_json::from_str::<Loose<Doc<'_>>>(raw)
        .map(|d| d.0)
        .unwrap_or_default()
}

/// How one value is read. Every JSON value is accepted; what a shape does not read
/// becomes [`Shape::other`].
trait Shape<'de>: Sized {
    /// Names the object keys this shape reads; [`Infallible`] for shapes that read none.
    type Field: Copy;

    /// Whether [`Shape::string`] uses its argument (if not, escaped strings are not copied).
    const READS_STRINGS: bool = false;

    /// Null, booleans, and every type this shape does not read.
    fn other() -> Self;

    fn string(_: Cow<'de, str>) -> Self {
        Self::other()
    }

    fn number(_: Number) -> Self {
        Self::other()
    }

    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Self::other())
    }

    /// An object, before any of its keys is read.
    fn object() -> Self {
        Self::other()
    }

    /// Which field `key` is, if this shape reads it.
    fn field(_key: &str) -> Option<Self::Field> {
        None
    }

    /// Reads the value of `field` with `map.next_value`, replacing what an earlier
    /// occurrence of the key gave.
    fn entry<A: MapAccess<'de>>(
        &mut self,
        _field: Self::Field,
        map: &mut A,
    ) -> Result<(), A::Error> {
        map.next_value::<Skip>().map(drop)
    }
}

/// A [`Shape`] as something serde can deserialize.
struct Loose<T>(T);

impl<'de, T: Shape<'de>> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor(PhantomData)).map(Loose)
    }
}

fn value<'de, T: Shape<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    Ok(map.next_value::<Loose<T>>()?.0)
}

/// `json`, the string value of a [`RAW_VALUE_TOKEN`] key, parsed as `T` on its own (with a
/// fresh nesting budget, as `Value` does). It is read through serde_json's I/O reader,
/// which never lends out its input, so the result does not borrow from `json`.
fn parse_detached<'de, T: Shape<'de>>(json: &str) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(json.as_bytes());
    let v = Loose::<T>::deserialize(&mut de)?;
    de.end()?;
    Ok(v.0)
}

struct ShapeVisitor<T>(PhantomData<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Ok(T::other())
    }

    // serde_json hands every number to one of these three, as it does when it builds a
    // `Value`; `Number::from` and `from_f64` are what `Value` makes of them.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(T::number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Ok(Number::from_f64(v).map_or_else(T::other, T::number))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(if T::READS_STRINGS {
            T::string(Cow::Owned(v.to_owned()))
        } else {
            T::other()
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::array(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut obj = match map.next_key_seed(KeySeed::<T::Field>(T::field))? {
            None => return Ok(T::object()),
            Some(Key::RawValueToken) => {
                let json: String = map.next_value()?;
                return parse_detached(&json).map_err(de::Error::custom);
            }
            Some(key) => {
                let mut obj = T::object();
                entry(&mut obj, key, &mut map)?;
                obj
            }
        };
        while let Some(key) = map.next_key_seed(KeySeed::<T::Field>(T::field))? {
            entry(&mut obj, key, &mut map)?;
        }
        Ok(obj)
    }
}

fn entry<'de, T: Shape<'de>, A: MapAccess<'de>>(
    obj: &mut T,
    key: Key<T::Field>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key {
        Key::Field(f) => obj.entry(f, map),
        // The marker is only special as the first key.
        Key::RawValueToken | Key::Other => map.next_value::<Skip>().map(drop),
    }
}

/// An object key, classified without copying it.
enum Key<F> {
    Field(F),
    RawValueToken,
    Other,
}

struct KeySeed<F>(fn(&str) -> Option<F>);

impl<'de, F> DeserializeSeed<'de> for KeySeed<F> {
    type Value = Key<F>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<F>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F> Visitor<'de> for KeySeed<F> {
    type Value = Key<F>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<F>, E> {
        Ok(match (self.0)(key) {
            Some(f) => Key::Field(f),
            None if key == RAW_VALUE_TOKEN => Key::RawValueToken,
            None => Key::Other,
        })
    }
}

/// A value the mapping does not read: checked as `Value` would check it, then dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(ShapeVisitor(PhantomData))
    }
}

impl Shape<'_> for Skip {
    type Field = Infallible;

    fn other() -> Self {
        Skip
    }
}

/// A field read as text: a string, or a number in its JSON spelling; anything else is
/// absent.
#[derive(Debug, Default)]
pub(super) enum Text<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Num(Number),
}

impl Text<'_> {
    /// The text, if it is a string that is not blank or a number (`None` when absent, null,
    /// blank or of another type).
    pub(super) fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Text::Str(s) if !s.trim().is_empty() => Some(Cow::Borrowed(s)),
            Text::Num(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    /// The string, blank or not; `None` for numbers and other types.
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Shape<'de> for Text<'de> {
    type Field = Infallible;
    const READS_STRINGS: bool = true;

    fn other() -> Self {
        Text::Absent
    }

    fn string(s: Cow<'de, str>) -> Self {
        Text::Str(s)
    }

    fn number(n: Number) -> Self {
        Text::Num(n)
    }
}

/// An array field: its elements, or `None` when the value is not an array.
#[derive(Debug)]
pub(super) struct List<T>(pub(super) Option<Vec<T>>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(None)
    }
}

impl<T> List<T> {
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten()
    }
}

impl<'de, T: Shape<'de>> Shape<'de> for List<T> {
    type Field = Infallible;

    fn other() -> Self {
        List(None)
    }

    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Loose<T>>()? {
            items.push(item.0);
        }
        Ok(List(Some(items)))
    }
}

/// Evidence lists hold a few to a few hundred structs of some 600 bytes; boxed, each is
/// built in place and only a pointer moves through serde's return values and the `Vec`.
impl<'de, T: Shape<'de>> Shape<'de> for Box<T> {
    type Field = T::Field;
    const READS_STRINGS: bool = T::READS_STRINGS;

    fn other() -> Self {
        Box::new(T::other())
    }

    fn string(s: Cow<'de, str>) -> Self {
        Box::new(T::string(s))
    }

    fn number(n: Number) -> Self {
        Box::new(T::number(n))
    }

    fn array<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        T::array(seq).map(Box::new)
    }

    fn object() -> Self {
        Box::new(T::object())
    }

    fn field(key: &str) -> Option<T::Field> {
        T::field(key)
    }

    fn entry<A: MapAccess<'de>>(&mut self, field: T::Field, map: &mut A) -> Result<(), A::Error> {
        (**self).entry(field, map)
    }
}

/// An array field of which only the length is read.
#[derive(Debug, Default)]
pub(super) struct Count(pub(super) Option<usize>);

impl<'de> Shape<'de> for Count {
    type Field = Infallible;

    fn other() -> Self {
        Count(None)
    }

    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut n = 0;
        while seq.next_element::<Skip>()?.is_some() {
            n += 1;
        }
        Ok(Count(Some(n)))
    }
}

/// Declares an object shape: a struct of fields, each with the JSON key it is read from
/// and its shape, plus groups: structs whose keys sit directly on this object (an MDE
/// evidence carries its user and file keys itself).
macro_rules! object {
    (
        $(#[$meta:meta])*
        $name:ident, $field:ident {
            $( $(#[$fmeta:meta])* $f:ident: $ty:ty = $key:literal, )*
        }
        $( groups { $( $(#[$gmeta:meta])* $g:ident: $gty:ident via $gvariant:ident, )* } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub(super) struct $name<'a> {
            $( $(#[$fmeta])* pub(super) $f: $ty, )*
            $( $( $(#[$gmeta])* pub(super) $g: $gty<'a>, )* )?
        }

        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types)]
        enum $field {
            $( $f, )*
            $( $( $gvariant(<$gty<'static> as Shape<'static>>::Field), )* )?
        }

        impl<'de> Shape<'de> for $name<'de> {
            type Field = $field;

            fn other() -> Self {
                Self::default()
            }

            fn field(key: &str) -> Option<$field> {
                match key {
                    $( $key => Some($field::$f), )*
                    _ => {
                        $( $( if let Some(f) = <$gty<'static> as Shape<'static>>::field(key) {
                            return Some($field::$gvariant(f));
                        } )* )?
                        None
                    }
                }
            }

            fn entry<A: MapAccess<'de>>(&mut self, field: $field, map: &mut A) -> Result<(), A::Error> {
                match field {
                    $( $field::$f => self.$f = value(map)?, )*
                    $( $( $field::$gvariant(f) => Shape::entry(&mut self.$g, f, map)?, )* )?
                }
                Ok(())
            }
        }
    };
}

object! {
    /// A user: Graph `userAccount`, MDE `relatedUser`, a logged-on user, or the user keys of
    /// an MDE `User` evidence.
    UserFields, UserField {
        account_name: Text<'a> = "accountName",
        user_name: Text<'a> = "userName",
        user_principal_name: Text<'a> = "userPrincipalName",
        domain_name: Text<'a> = "domainName",
    }
}

object! {
    /// File details: Graph `fileDetails` / `imageFile`, or the file keys of an MDE
    /// `File` / `Process` evidence.
    FileFields, FileField {
        file_name: Text<'a> = "fileName",
        file_path: Text<'a> = "filePath",
        sha1: Text<'a> = "sha1",
        sha256: Text<'a> = "sha256",
    }
}

/// An object-valued field whose presence matters even when it is not an object: a Graph
/// file evidence whose `fileDetails` is null still counts as the first file evidence.
#[derive(Debug, Default)]
pub(super) enum Present<T> {
    #[default]
    Absent,
    NotObject,
    Object(T),
}

impl<T> Present<T> {
    /// `None` when the key is absent; `Some(None)` when it holds something else than an
    /// object.
    pub(super) fn get(&self) -> Option<Option<&T>> {
        match self {
            Present::Absent => None,
            Present::NotObject => Some(None),
            Present::Object(t) => Some(Some(t)),
        }
    }

    pub(super) fn object(&self) -> Option<&T> {
        self.get().flatten()
    }
}

impl<'de, T: Shape<'de>> Shape<'de> for Present<T> {
    type Field = T::Field;

    fn other() -> Self {
        Present::NotObject
    }

    fn object() -> Self {
        Present::Object(T::object())
    }

    fn field(key: &str) -> Option<T::Field> {
        T::field(key)
    }

    fn entry<A: MapAccess<'de>>(&mut self, field: T::Field, map: &mut A) -> Result<(), A::Error> {
        match self {
            Present::Object(t) => t.entry(field, map),
            // Only objects are given entries.
            Present::Absent | Present::NotObject => map.next_value::<Skip>().map(drop),
        }
    }
}

object! {
    /// One element of `evidence`: the keys of both APIs (Graph evidence is typed by
    /// `@odata.type`, MDE evidence by `entityType` and flat).
    Evidence, EvidenceField {
        odata_type: Text<'a> = "@odata.type",
        entity_type: Text<'a> = "entityType",
        device_dns_name: Text<'a> = "deviceDnsName",
        logged_on_users: List<UserFields<'a>> = "loggedOnUsers",
        /// Graph `userAccount`; a value that is not an object reads as no keys.
        user_account: UserFields<'a> = "userAccount",
        ip_address: Text<'a> = "ipAddress",
        url: Text<'a> = "url",
        file_details: Present<FileFields<'a>> = "fileDetails",
        image_file: Present<FileFields<'a>> = "imageFile",
    }
    groups {
        /// MDE: the evidence's own user keys.
        user: UserFields via User,
        /// MDE: the evidence's own file keys.
        file: FileFields via File,
    }
}

object! {
    /// Every top-level key the mapping reads, for all four feeds.
    Doc, DocField {
        detector_id: Text<'a> = "detectorId",
        title: Text<'a> = "title",
        display_name: Text<'a> = "displayName",
        incident_name: Text<'a> = "incidentName",
        category: Text<'a> = "category",
        detection_source: Text<'a> = "detectionSource",
        incident_id: Text<'a> = "incidentId",
        mitre_techniques: List<Text<'a>> = "mitreTechniques",
        status: Text<'a> = "status",
        description: Text<'a> = "description",
        evidence: List<Box<Evidence<'a>>> = "evidence",
        // Graph alerts (and `createdDateTime`, Graph incidents).
        created_date_time: Text<'a> = "createdDateTime",
        first_activity_date_time: Text<'a> = "firstActivityDateTime",
        last_activity_date_time: Text<'a> = "lastActivityDateTime",
        threat_display_name: Text<'a> = "threatDisplayName",
        threat_family_name: Text<'a> = "threatFamilyName",
        actor_display_name: Text<'a> = "actorDisplayName",
        alert_web_url: Text<'a> = "alertWebUrl",
        // MDE alerts.
        alert_creation_time: Text<'a> = "alertCreationTime",
        first_event_time: Text<'a> = "firstEventTime",
        last_event_time: Text<'a> = "lastEventTime",
        threat_name: Text<'a> = "threatName",
        computer_dns_name: Text<'a> = "computerDnsName",
        related_user: UserFields<'a> = "relatedUser",
        // Incidents.
        created_time: Text<'a> = "createdTime",
        incident_web_url: Text<'a> = "incidentWebUrl",
        tags: List<Text<'a>> = "tags",
        custom_tags: List<Text<'a>> = "customTags",
        system_tags: List<Text<'a>> = "systemTags",
        classification: Text<'a> = "classification",
        assigned_to: Text<'a> = "assignedTo",
        determination: Text<'a> = "determination",
        alerts: Count = "alerts",
    }
}
