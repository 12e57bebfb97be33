//! One self-contained HTML page: inline CSS, inline SVG plots, a table
//! sorter that only enhances (every table is readable, and already sorted,
//! without it), nothing fetched from the network.

use std::fmt::Write as _;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which kind of page: `run` (one run directory) or `runs` (across runs);
/// written into a `<meta name="runner-page">` for tools that check pages.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Run,
    Runs,
}

/// A page being assembled, section by section.
pub struct Page {
    kind: Kind,
    title: String,
    subtitle: String,
    sections: Vec<(String, String, String)>,
}

impl Page {
    pub fn new(kind: Kind, title: &str, subtitle: &str) -> Page {
        Page {
            kind,
            title: title.to_string(),
            subtitle: subtitle.to_string(),
            sections: Vec::new(),
        }
    }

    /// A section with an anchor `id`, a heading and HTML content.
    pub fn section(&mut self, id: &str, heading: &str, html: String) {
        self.sections
            .push((id.to_string(), heading.to_string(), html));
    }

    pub fn render(&self) -> String {
        let kind = match self.kind {
            Kind::Run => "run",
            Kind::Runs => "runs",
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"runner {}\">\n\
             <meta name=\"runner-page\" content=\"{kind}\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
             <header><h1>{}</h1><p class=\"sub\">{}</p></header>\n<nav>",
            env!("CARGO_PKG_VERSION"),
            escape(&self.title),
            escape(&self.title),
            self.subtitle,
        );
        for (id, heading, _) in &self.sections {
            let _ = write!(out, "<a href=\"#{id}\">{}</a>", escape(heading));
        }
        out.push_str("</nav>\n<main>\n");
        for (id, heading, html) in &self.sections {
            let _ = write!(
                out,
                "<section id=\"{id}\">\n<h2>{}</h2>\n{html}\n</section>\n",
                escape(heading)
            );
        }
        let _ = write!(
            out,
            "</main>\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n"
        );
        out
    }
}

/// A plot: the SVG inline, a caption under it.
pub fn figure(id: &str, svg: &str, caption: &str) -> String {
    format!("<figure class=\"plot\" id=\"{id}\">{svg}<figcaption>{caption}</figcaption></figure>\n")
}

/// Figures side by side, wrapping to the page width.
pub fn grid(figures: &[String]) -> String {
    format!("<div class=\"grid\">{}</div>", figures.concat())
}

/// A table cell: its text, and the value it sorts by (numbers sort as
/// numbers; empty cells last).
pub struct Td {
    pub html: String,
    pub sort: Option<String>,
    pub numeric: bool,
}

impl Td {
    pub fn text(text: &str) -> Td {
        Td {
            html: escape(text),
            sort: None,
            numeric: false,
        }
    }

    pub fn html(html: String, sort_key: &str) -> Td {
        Td {
            html,
            sort: Some(sort_key.to_string()),
            numeric: false,
        }
    }

    pub fn number(value: Option<f64>, decimals: usize) -> Td {
        Td {
            html: value.map_or(String::new(), |v| format!("{v:.decimals$}")),
            sort: value.map(|v| v.to_string()),
            numeric: true,
        }
    }
}

/// A table; `sortable` adds the click-to-sort enhancement.
pub fn table(headers: &[String], rows: &[Vec<Td>], sortable: bool) -> String {
    let mut out = String::from("<div class=\"scroll\"><table");
    if sortable {
        out.push_str(" class=\"sortable\"");
    }
    out.push_str("><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for td in row {
            let class = if td.numeric { " class=\"num\"" } else { "" };
            match &td.sort {
                Some(key) => {
                    let _ = write!(
                        out,
                        "<td{class} data-sort=\"{}\">{}</td>",
                        escape(key),
                        td.html
                    );
                }
                None => {
                    let _ = write!(out, "<td{class}>{}</td>", td.html);
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Preformatted text (the spec).
pub fn pre(text: &str) -> String {
    format!("<pre>{}</pre>", escape(text))
}

pub fn paragraph(html: &str) -> String {
    format!("<p>{html}</p>")
}

const CSS: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0; background: #fafafa; }
header { padding: 16px 24px 4px; background: #fff; border-bottom: 1px solid #e4e4e4; }
h1 { font-size: 20px; margin: 0 0 4px; word-break: break-all; }
.sub { color: #555; margin: 0 0 8px; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #e4e4e4; padding: 6px 24px; z-index: 1; }
nav a { margin-right: 14px; color: #1f77b4; text-decoration: none; white-space: nowrap; }
main { padding: 8px 24px 32px; max-width: 1400px; }
section { margin-top: 20px; }
h2 { font-size: 16px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure.plot { margin: 0; background: #fff; border: 1px solid #e4e4e4; padding: 6px; }
figure.plot svg { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; max-width: 520px; margin-top: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
table.sortable th { cursor: pointer; }
table.sortable th[aria-sort="ascending"]::after { content: " \25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \25BC"; }
pre { background: #fff; border: 1px solid #e4e4e4; padding: 8px; overflow-x: auto; font-size: 12px; }
.best { font-weight: 600; }
@media print {
  body { background: #fff; }
  nav { display: none; }
  figure.plot, table { break-inside: avoid; }
  main { max-width: none; }
}
"#;

/// Click a header to sort by its column (numbers as numbers, empty cells
/// last); click again to reverse. The tables are complete without it.
const SORT_SCRIPT: &str = r#"
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0];
      var key = function (row) {
        var cell = row.cells[col];
        var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
        return v;
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return x === y ? 0 : (x === "" ? 1 : -1); }
        var nx = Number(x), ny = Number(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_page_names_its_kind() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let mut page = Page::new(Kind::Runs, "runs <all>", "3 runs");
        page.section(
            "t",
            "Table",
            table(&["a".into()], &[vec![Td::number(Some(0.5), 2)]], true),
        );
        let html = page.render();
        assert!(html.contains("<meta name=\"runner-page\" content=\"runs\">"));
        assert!(html.contains("<title>runs &lt;all&gt;</title>"));
        assert!(html.contains("<td class=\"num\" data-sort=\"0.5\">0.50</td>"));
        assert!(!html.contains("http"), "a page fetches nothing");
    }
}
