//! `[templates]`: the built-in templates with the operator's folder over them, checked
//! for every target's channel kind when the config is validated.

use super::target::*;
use anyhow::{Result, anyhow};
use std::path::Path;

/// Reads the template files, compiles them, and renders every one against sample
/// updates of every status and impact, holding each target to its channel's budget.
pub(super) fn build_templates(
    source: &str,
    config: &clarion_render::TemplatesConfig,
    targets: &[TargetConfig],
) -> Result<clarion_render::TemplateSet> {
    let files = match &config.dir {
        None => Vec::new(),
        Some(dir) => {
            // A relative directory is relative to the config file.
            let base = Path::new(source).parent().unwrap_or(Path::new("."));
            let dir = base.join(dir);
            read_templates(&dir)
                .map_err(|e| anyhow!("{source}: templates.dir: {}: {e}", dir.display()))?
        }
    };
    // A people target's legs render, each as the channel it is.
    // An origin publishes the status page, which has its own built-in pages.
    let targets: Vec<&TargetConfig> = targets
        .iter()
        .filter(|t| t.kind != ChannelKind::StatusPage)
        .flat_map(|t| t.channels())
        .collect();
    let plan: Vec<clarion_render::TargetTemplates> = targets
        .iter()
        .map(|t| clarion_render::TargetTemplates {
            name: t.name.to_string(),
            kind: t.render_kind(),
            audiences: t.audiences.clone(),
            locales: t.locale.iter().cloned().collect(),
        })
        .collect();
    let limit = |t: &clarion_render::TargetTemplates,
                 m: &clarion_render::Message|
     -> Result<(), String> {
        let Some(target) = targets.iter().find(|x| *x.name == *t.name) else {
            return Ok(());
        };
        match &target.channel {
            ChannelConfig::Sms(c) => {
                let text = m.get(clarion_render::Part::Text).unwrap_or("");
                let a = clarion_sms::encoding::analyze(text.trim());
                if a.segments > c.max_segments() {
                    return Err(format!(
                        "SMS text takes {} {:?} segments, over this target's max_segments = {} (it would be cut)",
                        a.segments,
                        a.encoding,
                        c.max_segments()
                    ));
                }
                Ok(())
            }
            ChannelConfig::Fcm(_) | ChannelConfig::Apns(_) => {
                let bytes = m.get(clarion_render::Part::Title).map_or(0, str::len)
                    + m.get(clarion_render::Part::Body).map_or(0, str::len);
                // Providers take 4096 bytes of payload; keep room for the data fields.
                if bytes > PUSH_TEXT_BUDGET {
                    return Err(format!(
                        "push title and body take {bytes} bytes, over the {PUSH_TEXT_BUDGET} that fit a 4 KB payload with its data fields"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    clarion_render::TemplateSet::validate(config, files, &plan, &limit).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow!(
            "{source}: templates: {} problem(s):\n{}",
            problems.len(),
            list.join("\n")
        )
    })
}

/// Title and body bytes that fit a push payload next to Clarion's data fields.
pub(super) const PUSH_TEXT_BUDGET: usize = 3500;

/// Every `*.j2` file under `dir`, as (path relative to `dir` with `/`, contents).
pub(super) fn read_templates(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "j2") {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("/"), std::fs::read_to_string(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}
