//! `lotrace compare`: a short traced ping to each target, or a command
//! with the target in it, the stage tables side by side, differences
//! marked.

use anyhow::{Result, bail};

use crate::{
    cmd::trace::{self, TraceOptions},
    output::{
        Format,
        compare::{Column, json, text},
        write_stdout,
    },
};

pub struct CompareOptions {
    pub targets: Vec<String>,
    /// Traced instead of ping, with the target put in.
    pub command: Vec<String>,
    pub count: u32,
    pub format: Format,
    pub template: TraceOptions,
}

/// `command` with `target` put where its arguments say `{}` (as given) or
/// `{host}` (as a URL's host: an IPv6 address in brackets).
pub fn fill(command: &[String], target: &str) -> Vec<String> {
    let host = if target.contains(':') && !target.starts_with('[') {
        format!("[{target}]")
    } else {
        target.to_string()
    };
    command
        .iter()
        .map(|a| a.replace("{host}", &host).replace("{}", target))
        .collect()
}

/// Why `command` cannot be compared across targets, if it cannot.
pub fn check_command(command: &[String]) -> Result<()> {
    if !command.is_empty()
        && !command
            .iter()
            .any(|a| a.contains("{}") || a.contains("{host}"))
    {
        bail!(
            "`{}` does not say where the target goes: write {{}} (or {{host}} in a URL) in its arguments",
            command.join(" ")
        );
    }
    Ok(())
}

pub async fn run(opts: CompareOptions) -> Result<i32> {
    check_command(&opts.command)?;
    let mut cols = Vec::new();
    for t in &opts.targets {
        let argv = if opts.command.is_empty() {
            vec![
                "ping".into(),
                "-c".into(),
                opts.count.to_string(),
                "-i".into(),
                "0.2".into(),
                t.clone(),
            ]
        } else {
            fill(&opts.command, t)
        };
        let mut o = opts.template.clone_for(argv.clone());
        o.format = opts.format;
        eprintln!("lotrace: tracing {}", argv.join(" "));
        let mut f = trace::run_session(o, true).await?;
        // A flow's destination is the end its first packet went to: the
        // server, for a client's connection or query.
        let mut servers: Vec<String> = Vec::new();
        for fl in f.session.take_packets().2.values() {
            let s = format!("{} {}", fl.proto.name().to_uppercase(), fl.ends(false).1);
            if !servers.contains(&s) {
                servers.push(s);
            }
        }
        cols.push(Column {
            target: t.clone(),
            command: argv.join(" "),
            resolved: f.meta.target.clone(),
            resolution: f.meta.resolution.clone(),
            servers,
            flows: f.session.flow_count(),
            stats: f.session.stats,
            packets: f.session.packet_stats,
            exit: f.code,
        });
    }
    write_stdout(&match opts.format {
        Format::Text => text(&cols),
        Format::Json => format!("{}\n", json(&cols)),
    })?;
    Ok(if cols.iter().all(|c| c.exit == 0) {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_target_goes_where_the_command_says() {
        let c = words("curl -s http://{host}:8000/ --resolve x:{}");
        assert_eq!(
            fill(&c, "::1"),
            words("curl -s http://[::1]:8000/ --resolve x:::1")
        );
        assert_eq!(
            fill(&c, "127.0.0.1"),
            words("curl -s http://127.0.0.1:8000/ --resolve x:127.0.0.1")
        );
        assert_eq!(fill(&c, "[::1]")[2], "http://[::1]:8000/");
        assert!(check_command(&c).is_ok());
        assert!(check_command(&[]).is_ok());
        let e = check_command(&words("curl http://127.0.0.1/")).unwrap_err();
        assert!(e.to_string().contains("write {}"), "{e}");
    }
}
