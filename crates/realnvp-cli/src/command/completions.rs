//! `realnvp completions`: a shell completion script.

// The flags of `realnvp completions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl Args {
    /// Prints the completion script of `cli` (the whole `realnvp` command) for the shell.
    pub fn run(self, cli: &mut clap::Command) {
        clap_complete::generate(self.shell, cli, "realnvp", &mut std::io::stdout());
    }
}
