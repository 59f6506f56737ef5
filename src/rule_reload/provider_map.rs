//! Which route reaches which rule file, and the mismatches that leave traffic uninspected.

use serde::Serialize;

use crate::rules::RuleSet;

#[derive(Debug, Clone, Serialize)]
pub struct RouteRules {
    pub route: String,
    pub provider: String,
    /// Whether a rule file for the provider is live.
    pub has_rules: bool,
}

/// The route ↔ provider map against `rules`, and one warning per route without rules and per
/// rule file no route reaches.
pub fn map(routes: &[(String, String)], rules: &RuleSet) -> (Vec<RouteRules>, Vec<String>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (route, provider) in routes {
        let has_rules = rules.providers().any(|known| known == provider);
        if !has_rules {
            warnings.push(format!(
                "route `{route}` (provider `{provider}`) has no rule file {provider}.toml: its responses are never inspected"
            ));
        }
        entries.push(RouteRules {
            route: route.clone(),
            provider: provider.clone(),
            has_rules,
        });
    }
    for provider in rules.providers() {
        if !routes.iter().any(|(_, routed)| routed == provider) {
            warnings.push(format!(
                "rule file {provider}.toml is reached by no route: its rules never run (a route needs `provider = \"{provider}\"`)"
            ));
        }
    }
    (entries, warnings)
}
