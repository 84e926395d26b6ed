//! The httpd side of this module's directives: the command table, and the per-server records
//! that hold [`ServerSettings`]. What each directive means and accepts is in
//! [`crate::config`].

use crate::config::{Compiled, Directive, ServerSettings, section_balancer};
use crate::httpd::Command;
use crate::httpd::config::{CommandTable, Directives, ServerConfig};

/// httpd's command table: every directive of [`Directive::ALL`], in its order.
pub static COMMANDS: CommandTable = CommandTable::new::<Apply>(&{
    let mut entries = [(c"", c""); Directive::ALL.len()];
    let mut i = 0;
    while i < Directive::ALL.len() {
        entries[i] = (Directive::ALL[i].c_name(), Directive::ALL[i].c_help());
        i += 1;
    }
    entries
});

struct Apply;

const MISSING: &str = "module configuration missing";

impl Directives for Apply {
    /// Every directive goes inside `<Proxy "balancer://name">` and applies to that balancer in
    /// the server (virtual host) where it is written.
    fn apply(which: usize, cmd: &mut Command<'_>, args: &[&str]) -> Result<(), String> {
        let directive = *Directive::ALL.get(which).ok_or("unknown directive")?;
        let path = cmd.section_path().map(|p| p.into_owned());
        let balancer = match path.as_deref().and_then(section_balancer) {
            Some(balancer) if cmd.in_section("<Proxy") => balancer.to_string(),
            _ => return Err(directive.misplaced(path.as_deref())),
        };
        // Taken out while `LBHashKey`'s expression is parsed (which reads the command), then put
        // back.
        let mut settings = std::mem::take(cmd.server_config::<ServerSettings>().ok_or(MISSING)?);
        let result = settings
            .apply(&balancer, directive, args, |source| cmd.parse_expression(source).map(Compiled::new));
        *cmd.server_config::<ServerSettings>().ok_or(MISSING)? = settings;
        result
    }
}

impl ServerConfig for ServerSettings {
    fn create() -> ServerSettings {
        ServerSettings::default()
    }

    fn merge(base: &ServerSettings, own: &ServerSettings) -> ServerSettings {
        ServerSettings::merge(base, own)
    }
}
