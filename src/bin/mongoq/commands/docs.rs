//! `mongoq completions SHELL` and `mongoq man`: generated from the clap
//! definition, so they always list every flag.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{failure, CommandError};

pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "mongoq", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man() -> Result<ExitCode, CommandError> {
    let command = Cli::command();
    let mut out = std::io::stdout().lock();
    let fail = |e: std::io::Error| failure(format!("cannot write the man page: {e}"));
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .map_err(fail)?;
    // One section per subcommand, so every flag is in the page.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        writeln!(out, ".SH \"MONGOQ {}\"", name.to_uppercase()).map_err(fail)?;
        let sub = sub.clone().bin_name(format!("mongoq {name}"));
        let man = clap_mangen::Man::new(sub);
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section).map_err(fail)?;
        man.render_description_section(&mut section).map_err(fail)?;
        man.render_options_section(&mut section).map_err(fail)?;
        // Its headings become subsections of this command's section.
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.write_all(section.as_bytes()).map_err(fail)?;
    }
    Ok(ExitCode::SUCCESS)
}
