//! Command-line options read as glibc's `getopt_long` reads them, for
//! both command lines storaged has (qemu-storage-daemon's and
//! qemu-nbd's): long options may be abbreviated to any unique prefix
//! (`--blockd`), take their value as `--opt value` or `--opt=value`;
//! short options may be bundled (`-hV`), and one that takes a value takes
//! the rest of the bundle (`-Tnbd_*`) or the next argument. Errors are
//! worded as glibc words them (without the program name).

use std::fmt;
use std::ops::ControlFlow;

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    Nothing,
    Value,
}

/// The options of one command line: what each name means (`K`).
pub struct Options<K: 'static> {
    pub long: &'static [(&'static str, Takes, K)],
    pub short: &'static [(char, Takes, K)],
}

/// An option value and the arguments it was spelled with, which error
/// messages quote (`--blockdev driver=x`, `--blockdev=driver=x`, `-Tfoo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub value: String,
    pub location: String,
}

impl Located {
    pub fn new(value: &str, location: &str) -> Located {
        Located {
            value: value.to_owned(),
            location: location.to_owned(),
        }
    }
}

/// One thing read from the arguments, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<K> {
    /// An option without a value.
    Flag(K),
    /// An option with its value.
    Valued(K, Located),
    /// An argument that is not an option (also each one after `--`).
    Operand(String),
    /// `--`: the rest are operands.
    EndOfOptions,
}

/// A syntax error in the command line, worded as glibc's `getopt_long`
/// words it (without the program name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// Reads `args` (without the program name) against `options`, handing
/// each item to `each` in order until it breaks: an error after that point
/// is not reported (`--help --bogus` is help, as with getopt).
pub fn read<K: Copy>(
    args: &[String],
    options: &Options<K>,
    mut each: impl FnMut(Item<K>) -> ControlFlow<()>,
) -> Result<(), CliError> {
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        let items = if arg == "--" {
            let mut items = vec![Item::EndOfOptions];
            items.extend(args[index..].iter().cloned().map(Item::Operand));
            index = args.len();
            items
        } else if let Some(long) = arg.strip_prefix("--") {
            vec![long_option(options, long, arg, args, &mut index)?]
        } else if arg.len() > 1 && arg.starts_with('-') {
            let mut items = Vec::new();
            let result = short_options(options, &arg[1..], args, &mut index, &mut items);
            // The options of a bundle before a bad letter count first.
            for item in items {
                if each(item).is_break() {
                    return Ok(());
                }
            }
            result?;
            continue;
        } else {
            vec![Item::Operand(arg.clone())]
        };
        for item in items {
            if each(item).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `--name`, `--name=value` or `--name value`, with `name` any unique
/// prefix of a long option.
fn long_option<K: Copy>(
    options: &Options<K>,
    text: &str,
    arg: &str,
    args: &[String],
    index: &mut usize,
) -> Result<Item<K>, CliError> {
    let (name, inline_value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    let (full_name, takes, meaning) = find_long(options, name, arg)?;
    match (takes, inline_value) {
        (Takes::Nothing, Some(_)) => Err(CliError(format!(
            "option '--{full_name}' doesn't allow an argument"
        ))),
        (Takes::Nothing, None) => Ok(Item::Flag(meaning)),
        (Takes::Value, Some(value)) => Ok(Item::Valued(meaning, Located::new(value, arg))),
        (Takes::Value, None) => {
            let Some(value) = args.get(*index) else {
                return Err(CliError(format!(
                    "option '--{full_name}' requires an argument"
                )));
            };
            *index += 1;
            let location = format!("{arg} {value}");
            Ok(Item::Valued(meaning, Located::new(value, &location)))
        }
    }
}

/// An exact name, else the only long option `name` is a prefix of.
fn find_long<K: Copy>(
    options: &Options<K>,
    name: &str,
    arg: &str,
) -> Result<(&'static str, Takes, K), CliError> {
    if let Some(&found) = options.long.iter().find(|(long, ..)| *long == name) {
        return Ok(found);
    }
    let candidates: Vec<_> = options
        .long
        .iter()
        .filter(|(long, ..)| !name.is_empty() && long.starts_with(name))
        .collect();
    match candidates.as_slice() {
        [&only] => Ok(only),
        [] => Err(CliError(format!("unrecognized option '{arg}'"))),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|(long, ..)| format!("'--{long}'"))
                .collect();
            Err(CliError(format!(
                "option '--{name}' is ambiguous; possibilities: {}",
                names.join(" ")
            )))
        }
    }
}

/// A bundle of short options (`-hV`, `-Tpattern`, `-T pattern`): flags
/// until the first option that takes a value, which takes the rest of the
/// bundle or the next argument.
fn short_options<K: Copy>(
    options: &Options<K>,
    bundle: &str,
    args: &[String],
    index: &mut usize,
    items: &mut Vec<Item<K>>,
) -> Result<(), CliError> {
    for (position, letter) in bundle.char_indices() {
        let Some(&(_, takes, meaning)) = options.short.iter().find(|(short, ..)| *short == letter)
        else {
            return Err(CliError(format!("invalid option -- '{letter}'")));
        };
        if takes == Takes::Nothing {
            items.push(Item::Flag(meaning));
            continue;
        }
        let attached = &bundle[position + letter.len_utf8()..];
        let value = if !attached.is_empty() {
            Located::new(attached, &format!("-{bundle}"))
        } else {
            let Some(value) = args.get(*index) else {
                return Err(CliError(format!(
                    "option requires an argument -- '{letter}'"
                )));
            };
            *index += 1;
            Located::new(value, &format!("-{bundle} {value}"))
        };
        items.push(Item::Valued(meaning, value));
        break;
    }
    Ok(())
}
