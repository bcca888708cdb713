//! Printing results: a table for people, JSON for scripts.

use std::fmt::Display;
use std::io::Write;

use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde::Serialize;

/// A table with the given header, laid out for the terminal.
pub(crate) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// Prints one line of results to stdout. When stdout is gone (`stockwire ... | head -1`),
/// there is no one left to tell: exit quietly, as a Unix tool does on SIGPIPE.
pub(crate) fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").is_err() {
        std::process::exit(0);
    }
}

/// One JSON document on one line.
pub(crate) fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => line(text),
        Err(e) => eprintln!("stockwire: cannot print result as JSON: {e}"),
    }
}
