//! The lines ferry itself writes into a job's log, in gitlab-runner's colours, and the
//! collapsible section markers GitLab's log viewer folds on (docs/job-log.md). Job logs are
//! compared byte for byte, so every string here is exact.

/// Ends a coloured part (`\e[0;m`).
pub const RESET: &str = "\x1b[0;m";
/// Errors (`ERROR: …`).
pub const BOLD_RED: &str = "\x1b[31;1m";
/// Notices and echoed commands (`$ …`).
pub const BOLD_GREEN: &str = "\x1b[32;1m";
/// The output-limit notice.
pub const BOLD_YELLOW: &str = "\x1b[33;1m";
/// Warnings (`WARNING: …`).
pub const YELLOW: &str = "\x1b[0;33m";
/// Section headers.
pub const BOLD_CYAN: &str = "\x1b[36;1m";
/// Service containers' output under `CI_DEBUG_SERVICES` (gitlab-runner's `ANSI_GREY`).
pub const GREY: &str = "\x1b[0;37m";
/// Erases to the end of the line (`\e[0K`), so a raw terminal shows no section marker.
pub const CLEAR: &str = "\x1b[0K";

/// `WARNING: <text>` in yellow, newline included.
pub fn warning_line(text: &str) -> String {
    format!("{YELLOW}WARNING: {text}{RESET}\n")
}

/// `ERROR: <text>` in bold red, newline included.
pub fn error_line(text: &str) -> String {
    format!("{BOLD_RED}ERROR: {text}{RESET}\n")
}

/// `<text>` in bold green (a notice: "Checking cache for …", "Job succeeded"), newline included.
pub fn notice_line(text: &str) -> String {
    format!("{BOLD_GREEN}{text}{RESET}\n")
}

/// `$ <command>` in bold green, the echo of a command before it runs, newline included.
pub fn command_line(command: &str) -> String {
    notice_line(&format!("$ {command}"))
}

/// Opens a collapsible section:
/// `\e[0Ksection_start:<unix ts>:<name>[collapsed=true]\r\e[0K\e[36;1m<header>\e[0;m\n`.
///
/// GitLab folds on `section_start:<ts>:<name>`; the leading `\e[0K` is GitLab's documented
/// format. The header is printed in bold cyan; a line break inside it would end the marker line,
/// so `\r`/`\n` become spaces. `name` goes through [`section_name`].
pub fn section_start(unix_ts: u64, name: &str, header: &str, collapsed: bool) -> String {
    let header: String = header
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let opts = if collapsed { "[collapsed=true]" } else { "" };
    format!(
        "{CLEAR}section_start:{unix_ts}:{}{opts}\r{CLEAR}{BOLD_CYAN}{header}{RESET}\n",
        section_name(name)
    )
}

/// Closes the section opened with the same name: `\e[0Ksection_end:<unix ts>:<name>\r\e[0K\n`.
pub fn section_end(unix_ts: u64, name: &str) -> String {
    format!(
        "{CLEAR}section_end:{unix_ts}:{}\r{CLEAR}\n",
        section_name(name)
    )
}

/// A section name as GitLab parses it: ASCII letters, digits, `_`, `.` and `-`; anything else
/// becomes `_`, and an empty name `section`.
pub fn section_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "section".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_gitlab_runner_colours() {
        assert_eq!(warning_line("w"), "\x1b[0;33mWARNING: w\x1b[0;m\n");
        assert_eq!(error_line("e"), "\x1b[31;1mERROR: e\x1b[0;m\n");
        assert_eq!(
            notice_line("Job succeeded"),
            "\x1b[32;1mJob succeeded\x1b[0;m\n"
        );
        assert_eq!(command_line("make"), "\x1b[32;1m$ make\x1b[0;m\n");
    }

    #[test]
    fn section_markers_have_gitlab_runner_format() {
        assert_eq!(
            section_start(
                1627911560,
                "step_script",
                "Executing \"step_script\" stage",
                false
            ),
            "\x1b[0Ksection_start:1627911560:step_script\r\x1b[0K\x1b[36;1mExecuting \"step_script\" stage\x1b[0;m\n"
        );
        assert_eq!(
            section_start(1627911560, "get_sources", "Getting source", true),
            "\x1b[0Ksection_start:1627911560:get_sources[collapsed=true]\r\x1b[0K\x1b[36;1mGetting source\x1b[0;m\n"
        );
        assert_eq!(
            section_end(1627911561, "step_script"),
            "\x1b[0Ksection_end:1627911561:step_script\r\x1b[0K\n"
        );
        // Names are kept to what GitLab parses; headers stay on one line.
        assert_eq!(
            section_end(1, "deploy prod/eu"),
            "\x1b[0Ksection_end:1:deploy_prod_eu\r\x1b[0K\n"
        );
        assert_eq!(section_name(""), "section");
        assert_eq!(section_name("a.b-c_d"), "a.b-c_d");
        assert!(section_start(1, "x", "a\nb", false).contains("a b\x1b[0;m\n"));
    }
}
