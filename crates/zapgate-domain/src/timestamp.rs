//! Milliseconds since the Unix epoch: what the store keeps and what sorts.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Always three fractional digits and `Z`, so formatted times sort as text.
const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// A UTC instant with millisecond precision. Serialised as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(jiff::Timestamp::now().as_millisecond())
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// An RFC 3339 time with its offset (`2026-01-31T09:00:00Z`,
    /// `…-03:00`); a time without an offset is refused, not guessed.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t: jiff::Timestamp = s.parse().ok()?;
        Some(Self(t.as_millisecond()))
    }

    pub fn to_rfc3339(self) -> String {
        match self.to_jiff() {
            Some(t) => t.strftime(FORMAT).to_string(),
            None => self.0.to_string(),
        }
    }

    /// The same instant as a `jiff::Timestamp` (`None` outside jiff's range,
    /// years -9999 to 9999).
    pub fn to_jiff(self) -> Option<jiff::Timestamp> {
        jiff::Timestamp::from_millisecond(self.0).ok()
    }

    pub fn from_jiff(t: jiff::Timestamp) -> Self {
        Self(t.as_millisecond())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 timestamp such as 2026-01-31T09:00:00Z"))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_millis() {
        let t = Timestamp::parse_rfc3339("2026-11-25T12:00:00.123Z").unwrap();
        assert_eq!(t.as_millis() % 1000, 123);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn formatted_times_sort_as_text() {
        let a = Timestamp::from_millis(1_700_000_000_370).to_rfc3339();
        let b = Timestamp::from_millis(1_700_000_000_373).to_rfc3339();
        assert_eq!(a, "2023-11-14T22:13:20.370Z");
        assert!(a < b);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Timestamp::parse_rfc3339("tomorrow"), None);
        assert_eq!(Timestamp::parse_rfc3339("2026-01-31T09:00:00"), None, "no offset");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-01-31T09:00:00-03:00"),
            Timestamp::parse_rfc3339("2026-01-31T12:00:00Z")
        );
    }
}
