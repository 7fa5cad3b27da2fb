//! A job log on the terminal (docs/exec.md, "Output"): the lines GitLab shows, without its
//! section markers, in colour only on a TTY, each line prefixed with its job's name when
//! several jobs run at once.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where rendered lines go.
pub struct Terminal {
    out: Box<dyn Write + Send>,
    colour: bool,
    /// Prefix each line with `[job name] ` (several jobs at once).
    prefix: bool,
    names: HashMap<u64, String>,
    /// The unfinished last line of each job's log.
    partial: HashMap<u64, Vec<u8>>,
}

impl Terminal {
    pub fn new(out: Box<dyn Write + Send>, colour: bool, prefix: bool) -> Terminal {
        Terminal {
            out,
            colour,
            prefix,
            names: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// A terminal that keeps nothing (tests of other parts).
    pub fn sink() -> Terminal {
        Terminal::new(Box::new(std::io::sink()), false, false)
    }

    /// A terminal writing into a shared buffer (tests).
    pub fn buffer(colour: bool, prefix: bool) -> (Terminal, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        (
            Terminal::new(Box::new(Shared(buf.clone())), colour, prefix),
            buf,
        )
    }

    pub fn name(&mut self, id: u64, name: &str) {
        // A job name comes from the YAML: no control characters reach the terminal.
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        self.names.insert(id, name);
    }

    /// Shows the complete lines of `chunk`; the rest waits for the next chunk or [`Self::end`].
    pub fn show(&mut self, id: u64, chunk: &[u8]) {
        let mut buf = self.partial.remove(&id).unwrap_or_default();
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = buf[start..start + n].to_vec();
            self.line(id, &line);
            start += n + 1;
        }
        buf.drain(..start);
        if !buf.is_empty() {
            self.partial.insert(id, buf);
        }
    }

    /// Shows what is left of a job's last line.
    pub fn end(&mut self, id: u64) {
        if let Some(rest) = self.partial.remove(&id) {
            self.line(id, &rest);
        }
    }

    /// Writes lines of ferry's own (the summary), which may quote job names from the YAML:
    /// on a TTY only their colour codes pass.
    pub fn say(&mut self, text: &str) {
        let text = if self.colour {
            text.lines()
                .map(only_colours)
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            strip(text.as_bytes())
        };
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn line(&mut self, id: u64, raw: &[u8]) {
        let Some(text) = render(raw, self.colour) else {
            return;
        };
        let prefix = match (self.prefix, self.names.get(&id)) {
            (true, Some(name)) => format!("[{name}] "),
            _ => String::new(),
        };
        let _ = writeln!(self.out, "{prefix}{text}");
        let _ = self.out.flush();
    }
}

const CLEAR: &str = "\x1b[0K";

/// One log line as a terminal shows it; `None` for a line that is only a section's end.
pub fn render(raw: &[u8], colour: bool) -> Option<String> {
    let mut line = String::from_utf8_lossy(raw).into_owned();
    let mut marker = false;
    for tag in ["section_start:", "section_end:"] {
        while let Some(at) = line.find(tag) {
            let end = line[at..].find('\r').map_or(line.len(), |r| at + r + 1);
            line.replace_range(at..end, "");
            marker = true;
        }
    }
    let line = line.replace(CLEAR, "");
    // A carriage return overwrites the line on a terminal: what shows is the last part.
    let line = line
        .rsplit('\r')
        .find(|part| !part.is_empty())
        .unwrap_or("")
        .to_string();
    if marker && strip(line.as_bytes()).trim().is_empty() {
        return None;
    }
    Some(if colour {
        only_colours(&line)
    } else {
        strip(line.as_bytes())
    })
}

/// `text` with its colour codes (`ESC [ … m`) and nothing else of the terminal's control
/// language: a job's output must not set the window title, the clipboard (OSC 52) or move the
/// cursor around ferry's own lines.
fn only_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            if !c.is_control() || c == '\t' {
                out.push(c);
            }
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                let mut seq = String::from("\x1b[");
                let mut keep = false;
                for d in chars.by_ref() {
                    seq.push(d);
                    if ('\x40'..='\x7e').contains(&d) {
                        keep = d == 'm';
                        break;
                    }
                }
                if keep {
                    out.push_str(&seq);
                }
            }
            Some(']') => {
                // An operating system command runs to BEL or ESC \.
                while let Some(d) = chars.next() {
                    if d == '\x07' || (d == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {
                chars.next();
            }
        }
    }
    out
}

fn strip(text: &[u8]) -> String {
    String::from_utf8_lossy(&strip_ansi_escapes::strip(text)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::joblog;

    #[test]
    fn section_markers_go_and_the_header_stays() {
        let start = joblog::section_start(1_700_000_000, "get_sources", "Getting source", true);
        let end = joblog::section_end(1_700_000_001, "get_sources");
        let text = format!("{start}Fetching\n{end}");
        let rendered: Vec<_> = text
            .split_inclusive('\n')
            .filter_map(|l| render(l.trim_end_matches('\n').as_bytes(), false))
            .collect();
        assert_eq!(rendered, ["Getting source", "Fetching"]);
        // On a TTY the colours stay, the markers still go.
        let header = render(start.trim_end().as_bytes(), true).unwrap();
        assert!(header.contains("\x1b[36;1mGetting source"), "{header:?}");
        assert!(!header.contains("section_start"), "{header:?}");
    }

    #[test]
    fn only_colour_codes_reach_a_tty() {
        let line = "\x1b[32;1mok\x1b[0;m \x1b]52;c;ZXZpbA==\x07\x1b]0;title\x1b\\\x1b[2Jend\x07";
        assert_eq!(
            render(line.as_bytes(), true).unwrap(),
            "\x1b[32;1mok\x1b[0;m end"
        );
        let (mut t, buf) = Terminal::buffer(true, false);
        t.say("JOB\nbad\x1b]0;title\x07name");
        assert_eq!(&*buf.lock().unwrap(), b"JOB\nbadname\n");
    }

    #[test]
    fn lines_split_across_chunks_are_joined_and_prefixed_with_the_job() {
        let (mut t, buf) = Terminal::buffer(false, true);
        t.name(7, "test 1/2");
        t.show(7, b"\x1b[32;1mhel");
        t.show(7, b"lo\x1b[0;m\nwor");
        t.show(7, b"ld\r\nprogress 10%\rprogress 100%\nlast");
        t.end(7);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "[test 1/2] hello\n[test 1/2] world\n[test 1/2] progress 100%\n[test 1/2] last\n"
        );
    }
}
