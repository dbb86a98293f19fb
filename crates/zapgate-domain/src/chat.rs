//! Where a message goes: a phone number, a group or a LID.

use crate::ValidationError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A WhatsApp chat address, parsed from what the caller wrote.
///
/// Accepted inputs: `+5511999998888` or `5511999998888` (E.164, 8–15 digits,
/// separators ` ()-.` ignored), `5511999998888@s.whatsapp.net` (a phone JID),
/// `120363012345678901@g.us` (a group) and `123456789012345@lid` (a LID).
/// The phone a caller gives may differ from the `wa_id` WhatsApp answers with
/// (Brazil's ninth digit), so the store keeps both; status callbacks are matched
/// by provider message id only, never by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChatId {
    /// Digits of an E.164 number, without `+`.
    Phone(String),
    /// Group id without the `@g.us` suffix (digits, possibly `creator-timestamp`).
    Group(String),
    /// Linked identity without the `@lid` suffix.
    Lid(String),
}

impl ChatId {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let s = input.trim();
        let bad = |why: &str| ValidationError::new("to", format!("{why} (got {s:?})"));
        if s.is_empty() {
            return Err(bad("a recipient is required"));
        }
        if let Some(id) = s.strip_suffix("@g.us") {
            let ok = !id.is_empty()
                && id.len() <= 40
                && id.split('-').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            return if ok { Ok(ChatId::Group(id.to_owned())) } else { Err(bad("not a valid group id")) };
        }
        if let Some(id) = s.strip_suffix("@lid") {
            let ok = (5..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit());
            return if ok { Ok(ChatId::Lid(id.to_owned())) } else { Err(bad("not a valid LID")) };
        }
        let phone = s.strip_suffix("@s.whatsapp.net").or_else(|| s.strip_suffix("@c.us")).unwrap_or(s);
        let phone = phone.strip_prefix('+').unwrap_or(phone);
        let mut digits = String::with_capacity(phone.len());
        for c in phone.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '(' | ')' | '.' => {}
                _ => return Err(bad("not a phone number, group (@g.us) or LID (@lid)")),
            }
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(bad("a phone number has 8 to 15 digits including the country code"));
        }
        if digits.starts_with('0') {
            return Err(bad("a phone number starts with its country code, not 0"));
        }
        Ok(ChatId::Phone(digits))
    }

    /// How the WhatsApp Cloud API names the chat (`wa_id`): digits for a
    /// phone, else the key.
    pub fn wa_id(&self) -> String {
        match self {
            ChatId::Phone(digits) => digits.clone(),
            other => other.key(),
        }
    }

    /// Stable key for per-chat ordering and storage (`5511…`, `…@g.us`, `…@lid`).
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// How zapgate shows the chat (and serialises it): `+<digits>` for
    /// numbers, the JID for groups and LIDs.
    pub fn shown(&self) -> String {
        self.e164().unwrap_or_else(|| self.key())
    }

    /// The phone number in E.164 form, for phone chats.
    pub fn e164(&self) -> Option<String> {
        match self {
            ChatId::Phone(d) => Some(format!("+{d}")),
            _ => None,
        }
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Phone(d) => write!(f, "{d}"),
            ChatId::Group(g) => write!(f, "{g}@g.us"),
            ChatId::Lid(l) => write!(f, "{l}@lid"),
        }
    }
}

impl Serialize for ChatId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ChatId::Phone(_) => s.serialize_str(&self.e164().unwrap_or_default()),
            _ => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for ChatId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChatId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_in_common_spellings_parse_to_digits() {
        for s in ["+55 11 99999-8888", "5511999998888", "5511999998888@s.whatsapp.net", "+55 (11) 99999.8888"] {
            assert_eq!(ChatId::parse(s).unwrap(), ChatId::Phone("5511999998888".into()), "{s}");
        }
    }

    #[test]
    fn groups_and_lids_keep_their_suffix_in_the_key() {
        assert_eq!(ChatId::parse("120363012345678901@g.us").unwrap().key(), "120363012345678901@g.us");
        assert_eq!(ChatId::parse("5511999998888-1612345678@g.us").unwrap().key(), "5511999998888-1612345678@g.us");
        assert_eq!(ChatId::parse("123456789012345@lid").unwrap().key(), "123456789012345@lid");
    }

    #[test]
    fn bad_addresses_are_rejected_with_the_field_named() {
        for s in ["", "abc", "+12", "+1234567890123456", "0551199999888", "x@g.us", "@lid", "12a45678"] {
            let e = ChatId::parse(s).unwrap_err();
            assert_eq!(e.field, "to", "{s}");
        }
    }

    #[test]
    fn serialises_phone_as_e164() {
        let c = ChatId::parse("5511999998888").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"+5511999998888\"");
    }
}
