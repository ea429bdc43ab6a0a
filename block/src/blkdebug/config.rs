//! The rules file of a `blkdebug` node (`config`), in QEMU's
//! configuration file format: `[inject-error]` and `[set-state]` groups
//! (optionally `[group "id"]`) of `name = "value"` lines, `#` comments.
//!
//! Lines are read as QEMU's `qemu_config_parse` reads them, through its
//! `sscanf` patterns, so that a file QEMU accepts means the same here and
//! a file it refuses is refused with its message: a name is a word of at
//! most 63 characters, and a line whose value is not `= "..."` gives the
//! name an empty value rather than an error. Each group is checked when
//! the next begins; the events and kinds of request are checked once the
//! whole file is read, as QEMU adds the rules after reading it.

use std::collections::HashSet;

use schema::block::{BlkdebugInjectErrorOptions, BlkdebugSetStateOptions};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::{BlockError, BlockResult, ErrorKind};

/// The longest name of a group, an id or an option (QEMU's buffers).
const NAME_MAX: usize = 63;
/// The longest value.
const VALUE_MAX: usize = 1023;

/// An `[inject-error]` group, as QemuOpts reads it.
#[derive(Deserialize)]
struct InjectGroup {
    event: Option<String>,
    state: Option<u64>,
    iotype: Option<String>,
    errno: Option<u64>,
    sector: Option<u64>,
    once: Option<bool>,
    immediately: Option<bool>,
}

/// A `[set-state]` group.
#[derive(Deserialize)]
struct SetStateGroup {
    event: Option<String>,
    state: Option<u64>,
    #[serde(rename = "new_state")]
    new_state: Option<u64>,
}

/// The rules a file gives, in its order.
#[derive(Default)]
pub(super) struct ConfigRules {
    pub inject: Vec<BlkdebugInjectErrorOptions>,
    pub set_state: Vec<BlkdebugSetStateOptions>,
}

/// Reads the rules file at `path`.
pub(super) async fn read(path: &str) -> BlockResult<ConfigRules> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| BlockError::from_io("Could not read blkdebug config file", e))?;
    parse(&text).map_err(|message| BlockError::new(ErrorKind::InvalidArgument, message))
}

/// A group being read: its name, id and items.
struct Group {
    name: String,
    id: Option<String>,
    items: Vec<(String, String)>,
}

/// The groups read so far, checked as QemuOpts checks them.
#[derive(Default)]
struct Groups {
    inject: Vec<InjectGroup>,
    set_state: Vec<SetStateGroup>,
    inject_ids: HashSet<String>,
    set_state_ids: HashSet<String>,
}

impl Groups {
    fn add(&mut self, mut group: Group) -> Result<(), String> {
        let (ids, list) = match group.name.as_str() {
            "inject-error" => (&mut self.inject_ids, "inject-error"),
            "set-state" => (&mut self.set_state_ids, "set-state"),
            other => return Err(format!("There is no option group '{other}'")),
        };
        // An `id` item names the group as well as `[group "id"]` does.
        if let Some(at) = group.items.iter().rposition(|(name, _)| name == "id") {
            group.id = Some(group.items.remove(at).1);
            group.items.retain(|(name, _)| name != "id");
        }
        if let Some(id) = group.id {
            if !is_identifier(&id) {
                return Err("Parameter 'id' expects an identifier".to_string());
            }
            if !ids.insert(id.clone()) {
                return Err(format!("Duplicate ID '{id}' for {list}"));
            }
        }
        let items = group.items;
        if list == "inject-error" {
            self.inject.push(from_items(items)?);
        } else {
            self.set_state.push(from_items(items)?);
        }
        Ok(())
    }

    /// The rules, checked in QEMU's order: error rules, then state rules.
    fn into_rules(self) -> Result<ConfigRules, String> {
        let mut rules = ConfigRules::default();
        for group in self.inject {
            rules.inject.push(BlkdebugInjectErrorOptions {
                event: qapi_value(event_name(group.event)?)?,
                state: group.state.map(|v| v as i64),
                iotype: group.iotype.map(qapi_value).transpose()?,
                errno: group.errno.map(|v| v as i64),
                sector: group.sector.map(|v| v as i64),
                once: group.once,
                immediately: group.immediately,
            });
        }
        for group in self.set_state {
            rules.set_state.push(BlkdebugSetStateOptions {
                event: qapi_value(event_name(group.event)?)?,
                state: group.state.map(|v| v as i64),
                new_state: group.new_state.map_or(0, |v| v as i64),
            });
        }
        Ok(rules)
    }
}

fn from_items<T: serde::de::DeserializeOwned>(items: Vec<(String, String)>) -> Result<T, String> {
    schema::qemuopts::from_items(items).map_err(|e| e.desc)
}

fn event_name(event: Option<String>) -> Result<String, String> {
    event.ok_or_else(|| "Missing event name for rule".to_string())
}

/// The QAPI enum value `name` (QEMU's `qapi_enum_parse` wording).
fn qapi_value<T: serde::de::DeserializeOwned>(name: String) -> Result<T, String> {
    serde_json::from_value(Json::String(name.clone()))
        .map_err(|_| format!("invalid parameter value: {name}"))
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Parses a whole file.
fn parse(text: &[u8]) -> Result<ConfigRules, String> {
    let mut groups = Groups::default();
    let mut group: Option<Group> = None;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line[0] == b'\n' || line[0] == b'#' {
            continue;
        }
        if line[0] == b'[' {
            if let Some((name, id)) = group_header(line) {
                if let Some(done) = group.replace(Group {
                    name,
                    id,
                    items: Vec::new(),
                }) {
                    groups.add(done)?;
                }
                continue;
            }
        }
        let item = name_value(line).ok_or("parse error")?;
        group.as_mut().ok_or("no group defined")?.items.push(item);
    }
    if let Some(done) = group {
        groups.add(done)?;
    }
    groups.into_rules()
}

/// A cursor over a line that matches `sscanf` conversions.
struct Scan<'a>(&'a [u8]);

impl<'a> Scan<'a> {
    /// A space in the format: any amount of white space, even none.
    fn skip_space(&mut self) {
        let n = self
            .0
            .iter()
            .take_while(|b| b.is_ascii_whitespace() || **b == 0x0b)
            .count();
        self.0 = &self.0[n..];
    }

    /// A literal character.
    fn literal(&mut self, c: u8) -> Option<()> {
        let (&first, rest) = self.0.split_first()?;
        (first == c).then(|| self.0 = rest)
    }

    /// `%Ns`: skips white space, then one to `max` other characters.
    fn word(&mut self, max: usize) -> Option<String> {
        self.skip_space();
        self.take_while(max, |b| !b.is_ascii_whitespace() && b != 0x0b)
    }

    /// `%N[^c]`: one to `max` characters other than `c`.
    fn until(&mut self, max: usize, c: u8) -> Option<String> {
        self.take_while(max, |b| b != c)
    }

    fn take_while(&mut self, max: usize, keep: impl Fn(u8) -> bool) -> Option<String> {
        let n = self.0.iter().take(max).take_while(|b| keep(**b)).count();
        if n == 0 {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(String::from_utf8_lossy(taken).into_owned())
    }
}

/// A group header: `[name "id"]` or `[name]` (the line starts with `[`).
fn group_header(line: &[u8]) -> Option<(String, Option<String>)> {
    // `[%63s "%63[^"]"]`, which needs both conversions.
    let mut scan = Scan(&line[1..]);
    if let Some(name) = scan.word(NAME_MAX) {
        scan.skip_space();
        if let Some(id) = scan.literal(b'"').and_then(|()| scan.until(NAME_MAX, b'"')) {
            return Some((name, Some(id)));
        }
    }
    // `[%63[^]]]`.
    Scan(&line[1..])
        .until(NAME_MAX, b']')
        .map(|name| (name, None))
}

/// A `name = "value"` line: `" %63s = \"%1023[^\"]\""`, or else any line
/// with a name (`" %63s = \"\""` succeeds once the name is read), whose
/// value is then empty.
fn name_value(line: &[u8]) -> Option<(String, String)> {
    let mut scan = Scan(line);
    let name = scan.word(NAME_MAX)?;
    scan.skip_space();
    let value = scan
        .literal(b'=')
        .and_then(|()| {
            scan.skip_space();
            scan.literal(b'"')
        })
        .and_then(|()| scan.until(VALUE_MAX, b'"'))
        .unwrap_or_default();
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use schema::block::{BlkdebugEvent, BlkdebugIoType};

    use super::*;

    fn error(text: &str) -> String {
        match parse(text.as_bytes()) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(message) => message,
        }
    }

    #[test]
    fn rules_are_read_in_order_with_their_values() {
        let rules = parse(
            b"# rules\n\n[inject-error]\nevent = \"read_aio\"\nerrno = \"0x1c\"\n  sector = \"-1\"\n\
              iotype = \"write-zeroes\"\nonce = \"on\"\n[set-state \"s1\"]\nevent =   \"none\"\n\
              new_state = \"2\"\n[inject-error]\nevent = \"write_aio\" trailing words\nstate = \"2\"",
        )
        .unwrap();
        assert_eq!(rules.inject.len(), 2);
        let first = &rules.inject[0];
        assert_eq!(first.event, BlkdebugEvent::ReadAio);
        assert_eq!(first.errno, Some(28));
        assert_eq!(first.sector, Some(-1));
        assert_eq!(first.iotype, Some(BlkdebugIoType::WriteZeroes));
        assert_eq!(first.once, Some(true));
        assert_eq!(rules.inject[1].event, BlkdebugEvent::WriteAio);
        assert_eq!(rules.inject[1].state, Some(2));
        assert_eq!(rules.set_state[0].event, BlkdebugEvent::None);
        assert_eq!(rules.set_state[0].new_state, 2);
    }

    /// The messages qemu-storage-daemon 10.0 gives for these files.
    #[test]
    fn bad_files_get_qemus_messages() {
        for (text, message) in [
            ("event = \"x\"\n", "no group defined"),
            ("[inject-error]\n   \n", "parse error"),
            ("[]\nevent = \"read_aio\"\n", "no group defined"),
            ("[bogus]\nevent = \"read_aio\"\n", "There is no option group 'bogus'"),
            ("[inject-error]\nevent = \"read_aio\"\nfoo = \"1\"\n", "Invalid parameter 'foo'"),
            ("[inject-error]\nevent = \"nosuch\"\n", "invalid parameter value: nosuch"),
            ("[inject-error]\nevent = read_aio\n", "invalid parameter value: "),
            ("[inject-error]\nerrno = \"5\"\n", "Missing event name for rule"),
            ("[inject-error]\n", "Missing event name for rule"),
            ("[inject-error]\nevent = \"read_aio\"\nerrno = \"abc\"\n", "Parameter 'errno' expects a number"),
            (
                "[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999\"\n",
                "Value '99999999999999999999' is too large for parameter 'errno'",
            ),
            ("[inject-error]\nevent = \"read_aio\"\nonce = \"maybe\"\n", "Parameter 'once' expects 'on' or 'off'"),
            ("[set-state]\nevent = \"read_aio\"\nnew-state = \"2\"\n", "Invalid parameter 'new-state'"),
            ("[set-state]\nevent = \"read_aio\"\n  [inject-error]\n", "Invalid parameter '[inject-error]'"),
            ("[inject-error]\nevent = \"read_aio\"\nsector=\"\"\n", "Invalid parameter 'sector=\"\"'"),
            ("[inject-error \"1x\"]\nevent = \"read_aio\"\n", "Parameter 'id' expects an identifier"),
            (
                "[inject-error \"a\"]\nevent = \"read_aio\"\n[inject-error \"a\"]\nevent = \"read_aio\"\n",
                "Duplicate ID 'a' for inject-error",
            ),
            (
                "[set-state]\nevent = \"read_aio\"\nnew_state = \"2\"\n[inject-error \"x\"]\nevent = \"read_aio\"\niotype = \"nope\"\n",
                "invalid parameter value: nope",
            ),
            // Error rules are checked before state rules.
            (
                "[set-state]\nevent = \"bad2\"\nnew_state = \"1\"\n[inject-error]\nevent = \"bad1\"\n",
                "invalid parameter value: bad1",
            ),
        ] {
            assert_eq!(error(text), message, "{text:?}");
        }
    }

    #[test]
    fn a_later_item_replaces_an_earlier_one() {
        let rules =
            parse(b"[inject-error]\nevent = \"read_aio\"\nevent = \"write_aio\"\n").unwrap();
        assert_eq!(rules.inject[0].event, BlkdebugEvent::WriteAio);
    }
}
