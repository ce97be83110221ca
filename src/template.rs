//! The SQL templates under `queries/`: `{name}` slots the program fills with quoted
//! identifiers and expressions built from the job, never with values.

/// Fills `{name}` slots of a template in one pass, so filled-in text is never rescanned.
/// A `{` that opens no known slot is kept as it is.
pub(crate) fn fill(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').and_then(|end| {
            let name = &after[..end];
            parts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A template as one line: its `--` comment lines dropped, every other line trimmed
/// and the lines joined by single spaces. A template is laid out on lines to be read;
/// the statement runs (and a dry run shows it) as this one line.
pub(crate) fn one_line(template: &str) -> String {
    template
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`one_line`], then [`fill`].
pub(crate) fn render(template: &str, parts: &[(&str, &str)]) -> String {
    fill(&one_line(template), parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_known_slots_once() {
        assert_eq!(
            fill(
                "SELECT {a} FROM {t} WHERE x = '{b}'",
                &[("a", "{t}"), ("t", "\"t\"")]
            ),
            "SELECT {t} FROM \"t\" WHERE x = '{b}'"
        );
    }

    #[test]
    fn one_line_drops_comments_and_joins_lines() {
        let t = "-- what it does\n-- more\nSELECT a,\n       b\nFROM t\n";
        assert_eq!(one_line(t), "SELECT a, b FROM t");
        assert_eq!(render("-- c\nSELECT {x}\n", &[("x", "1")]), "SELECT 1");
    }
}
