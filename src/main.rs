//! Command-line entry point: parses arguments and hands off to the library.

use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use haltgate::rules::{self, RuleSet};

#[derive(Parser)]
#[command(name = "haltgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rule file tools.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Decide recorded exchanges given as JSON lines.
    Classify {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// HOST=PROVIDER, used when a line names no provider (repeatable; defaults to the
        /// well-known API hosts).
        #[arg(long = "host", value_parser = parse_host)]
        hosts: Vec<(String, String)>,
        /// Input file, or `-` for stdin.
        #[arg(default_value = "-")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile the rule files and report every error.
    Check {
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the rule test cases and the shared transient corpus.
    Test {
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Show which guard or rule decides a case, and why.
    Explain {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        case: PathBuf,
    },
}

fn parse_host(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(host, provider)| (host.to_ascii_lowercase(), provider.to_owned()))
        .ok_or_else(|| format!("expected HOST=PROVIDER, got `{text}`"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Rules { command } => match command {
            RulesCommand::Check { dir } => rules::check::run(&dir, &mut out),
            RulesCommand::Test { dir } => rules::cases::run(&dir, &mut out),
            RulesCommand::Explain { rules, case } => rules::cases::explain(&rules, &case, &mut out),
        },
        Command::Classify {
            rules,
            hosts,
            input,
        } => classify(&rules, hosts, &input, &mut out),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("haltgate: {error}");
            ExitCode::from(2)
        }
    }
}

fn classify(
    dir: &std::path::Path,
    hosts: Vec<(String, String)>,
    input: &std::path::Path,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let rules = match RuleSet::load_dir(dir) {
        Ok(rules) => rules,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(false);
        }
    };
    let hosts = if hosts.is_empty() {
        rules::exchange::default_hosts()
    } else {
        hosts
    };
    if input.as_os_str() == "-" {
        haltgate::classify::run(&rules, &hosts, &mut io::stdin().lock(), out)
    } else {
        let file = std::fs::File::open(input)?;
        haltgate::classify::run(&rules, &hosts, &mut BufReader::new(file), out)
    }
}
