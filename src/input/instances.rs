//! `[[aws.instance]]`: Supply Chain instances reached through a region, a role or an endpoint of
//! their own. They are read from the config file's tables with their spans (environment
//! overrides cannot express an array of tables), so each problem names `file:line:column`.

use std::collections::HashMap;
use std::ops::Range;

use toml_edit::{Document, Item, Table};

use crate::input::diagnostic::{Diagnostic, SourceText, line_of};
use crate::input::{aws, number};
use crate::model::check_uuid;

/// One `[[aws.instance]]` entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSettings {
    /// The watchlist's `instance_id`.
    pub id: String,
    /// `None`: `aws.region` (or the provider chain's).
    pub region: Option<String>,
    /// `None`: the base credentials.
    pub role: Option<Role>,
    /// `None`: `aws.endpoint_url`.
    pub endpoint_url: Option<String>,
    /// The cap of the instance's account and region. `None`: `polling.max_requests_per_second`.
    pub max_requests_per_second: Option<f64>,
}

/// A role to assume with the base credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub arn: String,
    /// The role's account: its calls are this account's.
    pub account_id: String,
    pub external_id: Option<String>,
}

/// The keys of an entry.
pub const FIELDS: [&str; 6] = [
    "id",
    "region",
    "role_arn",
    "external_id",
    "endpoint_url",
    "max_requests_per_second",
];

/// What an entry falls back to: `aws.region` and `polling.max_requests_per_second`.
pub struct Defaults {
    pub region: Option<String>,
    pub max_requests_per_second: f64,
}

/// The partitions a role ARN may name.
const PARTITIONS: [&str; 8] = [
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "aws-eusc",
];

/// Reads every `[[aws.instance]]` of `doc`; the problems carry their places in `src`.
pub fn read(
    src: &SourceText<'_>,
    doc: &Document<&str>,
    defaults: &Defaults,
) -> (Vec<InstanceSettings>, Vec<Diagnostic>) {
    let mut problems = Vec::new();
    let Some(aws) = doc.get("aws").and_then(Item::as_table) else {
        return (Vec::new(), problems);
    };
    let tables: Vec<&Table> = match aws.get("instance") {
        None => return (Vec::new(), problems),
        Some(Item::ArrayOfTables(array)) => array.iter().collect(),
        Some(other) => {
            problems.push(src.at(
                other.span(),
                "aws.instance must be [[aws.instance]] tables, one per instance",
            ));
            return (Vec::new(), problems);
        }
    };
    let mut instances = Vec::new();
    let mut spans = Vec::new();
    for table in tables {
        let mut entry = Entry {
            src,
            table,
            problems: &mut problems,
        };
        if let Some(instance) = entry.instance() {
            spans.push(table.span());
            instances.push(instance);
        }
    }
    problems.extend(conflicts(src, &instances, &spans, defaults));
    (instances, problems)
}

/// An entry whose id repeats an earlier one (naming both lines), or whose cap differs from an
/// earlier entry's of the same account and region: AWS's quotas are per account and region, and
/// so is flowwatch's budget.
fn conflicts(
    src: &SourceText<'_>,
    instances: &[InstanceSettings],
    spans: &[Option<Range<usize>>],
    defaults: &Defaults,
) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut caps: HashMap<(String, String), (f64, usize)> = HashMap::new();
    for (instance, span) in instances.iter().zip(spans) {
        let here = |message: String| src.at(span.clone(), message);
        let line = line_of(&here(String::new()).location).unwrap_or(0);
        if let Some(first) = ids.insert(&instance.id, line) {
            problems.push(here(format!(
                "duplicate [[aws.instance]] for instance {}: already at line {first} (this is line {line})",
                instance.id
            )));
            continue;
        }
        let account = instance
            .role
            .as_ref()
            .map_or_else(String::new, |r| r.account_id.clone());
        let region = instance
            .region
            .clone()
            .or_else(|| defaults.region.clone())
            .unwrap_or_default();
        let cap = instance
            .max_requests_per_second
            .unwrap_or(defaults.max_requests_per_second);
        match caps.get(&(account.clone(), region.clone())) {
            Some(&(other, first)) if other != cap => problems.push(here(format!(
                "max_requests_per_second {} differs from {} at line {first} for the same account ({}) and region ({}): one budget serves both",
                number(cap),
                number(other),
                if account.is_empty() { "the base credentials'" } else { &account },
                if region.is_empty() { "the provider chain's" } else { &region },
            ))),
            Some(_) => {}
            None => {
                caps.insert((account, region), (cap, line));
            }
        }
    }
    problems
}

/// Reads the fields of one entry, recording each problem where it sits.
struct Entry<'s, 't, 'p> {
    src: &'s SourceText<'s>,
    table: &'t Table,
    problems: &'p mut Vec<Diagnostic>,
}

impl Entry<'_, '_, '_> {
    fn instance(&mut self) -> Option<InstanceSettings> {
        for (key, _) in self.table.iter() {
            if !FIELDS.contains(&key) {
                let span = self.table.key(key).and_then(|k| k.span());
                self.problems.push(self.src.at(
                    span,
                    format!(
                        "unknown key `{key}` in [[aws.instance]]: expected one of {}",
                        FIELDS.join(", ")
                    ),
                ));
            }
        }
        let id = self.text("id");
        if id.is_none() && self.table.get("id").is_none() {
            self.problems.push(self.src.at(
                self.table.span(),
                "[[aws.instance]] needs an id: the watchlist's instance_id",
            ));
        }
        let id = id.and_then(|id| self.checked("id", id, |v| check_uuid("id", v).err()));
        let region = self
            .text("region")
            .and_then(|r| self.checked("region", r, aws::region_problem));
        let external_id = self
            .text("external_id")
            .filter(|e| !e.is_empty())
            .and_then(|e| self.checked("external_id", e, external_id_problem));
        let role =
            self.text("role_arn")
                .filter(|a| !a.is_empty())
                .and_then(|arn| match role_account(&arn) {
                    Ok(account_id) => Some(Role {
                        arn,
                        account_id,
                        external_id: external_id.clone(),
                    }),
                    Err(problem) => {
                        self.problem("role_arn", problem);
                        None
                    }
                });
        if external_id.is_some() && self.text_raw("role_arn").is_none_or(str::is_empty) {
            self.problem(
                "external_id",
                "external_id is sent with AssumeRole: it needs role_arn".into(),
            );
        }
        let endpoint_url = self
            .text("endpoint_url")
            .filter(|u| !u.is_empty())
            .and_then(|u| {
                self.checked("endpoint_url", u, |v| {
                    aws::http_url_problem(v)
                        .map(|p| format!("endpoint_url must be an http:// or https:// URL: it {p}"))
                })
            });
        let max_requests_per_second = self.rate();
        Some(InstanceSettings {
            id: id?,
            region,
            role,
            endpoint_url,
            max_requests_per_second,
        })
    }

    fn problem(&mut self, key: &str, message: String) {
        let span = self.table.get(key).and_then(Item::span);
        self.problems.push(self.src.at(span, message));
    }

    /// The string at `key`; another type is a problem.
    fn text(&mut self, key: &str) -> Option<String> {
        let item = self.table.get(key)?;
        match item.as_str() {
            Some(v) => Some(v.to_string()),
            None => {
                let found = item.type_name();
                self.problem(key, format!("{key} must be a string, found {found}"));
                None
            }
        }
    }

    fn text_raw(&self, key: &str) -> Option<&str> {
        self.table.get(key).and_then(Item::as_str)
    }

    /// `value` when `problem` finds nothing wrong with it; the problem is recorded otherwise.
    fn checked(
        &mut self,
        key: &str,
        value: String,
        problem: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        match problem(&value) {
            None => Some(value),
            Some(p) => {
                self.problem(key, p);
                None
            }
        }
    }

    /// `max_requests_per_second`: a number (an integer is taken too) in the polling cap's range.
    fn rate(&mut self) -> Option<f64> {
        let item = self.table.get("max_requests_per_second")?;
        let rate = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        let valid = rate.filter(|r| r.is_finite() && (0.01..=10_000.0).contains(r));
        if valid.is_none() {
            self.problem(
                "max_requests_per_second",
                format!(
                    "max_requests_per_second must be a number from 0.01 to 10000, not {}",
                    crate::model::bounded(item.to_string().trim(), 40)
                ),
            );
        }
        valid
    }
}

/// The account of a role ARN (`arn:<partition>:iam::<12 digits>:role/<path/>name`), or why it
/// is not one.
pub fn role_account(arn: &str) -> Result<String, String> {
    let shown = crate::model::bounded(arn, 120);
    let bad = |why: &str| Err(format!("role_arn {shown:?} is not a role ARN: {why}"));
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return bad("expected arn:aws:iam::123456789012:role/name");
    };
    if prefix != "arn" || service != "iam" || !region.is_empty() {
        return bad("expected arn:aws:iam::123456789012:role/name");
    }
    if !PARTITIONS.contains(&partition) {
        return bad(&format!("unknown partition {partition:?}"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the account must be 12 digits");
    }
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return bad("the resource must be role/<name>");
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c);
    if name.is_empty() || name.len() > 64 || arn.len() > 2048 || !path_and_name.chars().all(allowed)
    {
        return bad("the role name is 1 to 64 characters of letters, digits and +=,.@_-");
    }
    Ok(account.to_string())
}

/// Why `id` is not an external id STS takes (2 to 1224 characters of `[\w+=,.@:/-]`), if not.
fn external_id_problem(id: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
    let valid = (2..=1224).contains(&id.len()) && id.chars().all(allowed);
    (!valid).then(|| {
        "external_id must be 2 to 1224 characters of letters, digits and _+=,.@:/-".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ID: &str = "8850c54e-e187-4fa7-89d4-6370f165174d";
    const OTHER: &str = "9960d65f-f298-4fa7-89d4-6370f165174e";

    fn parse(text: &str) -> Result<Vec<InstanceSettings>, Vec<String>> {
        let path = Path::new("c.toml");
        let src = SourceText::new(path, text);
        let doc = Document::parse(text).expect("toml");
        let defaults = Defaults {
            region: Some("us-east-1".into()),
            max_requests_per_second: 5.0,
        };
        let (instances, problems) = read(&src, &doc, &defaults);
        if problems.is_empty() {
            Ok(instances)
        } else {
            Err(problems.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn an_instance_takes_its_region_role_endpoint_and_cap() {
        let text = format!(
            "[aws]\nregion = \"us-east-1\"\n\n[[aws.instance]]\nid = \"{ID}\"\nregion = \"eu-central-1\"\nrole_arn = \"arn:aws:iam::222222222222:role/ops/flowwatch-reader\"\nexternal_id = \"flowwatch-prod\"\nendpoint_url = \"https://scn.eu-central-1.amazonaws.com\"\nmax_requests_per_second = 2\n\n[[aws.instance]]\nid = \"{OTHER}\"\n"
        );
        let instances = parse(&text).expect("valid");
        assert_eq!(instances.len(), 2);
        let first = &instances[0];
        assert_eq!(first.region.as_deref(), Some("eu-central-1"));
        let role = first.role.as_ref().expect("a role");
        assert_eq!(role.account_id, "222222222222");
        assert_eq!(role.external_id.as_deref(), Some("flowwatch-prod"));
        assert_eq!(first.max_requests_per_second, Some(2.0));
        assert_eq!(
            instances[1],
            InstanceSettings {
                id: OTHER.into(),
                region: None,
                role: None,
                endpoint_url: None,
                max_requests_per_second: None,
            }
        );
    }

    #[test]
    fn every_problem_names_its_line_and_column() {
        let text = format!(
            "[[aws.instance]]\nid = \"{ID}\"\nregion = \"EU-Central-1\"\nrole_arn = \"arn:aws:iam::2222:role/r\"\nexternal_id = \"x\"\nendpoint_url = \"ftp://h\"\nmax_requests_per_second = 0\ncolour = \"blue\"\n\n[[aws.instance]]\nid = \"not-a-uuid\"\nexternal_id = \"lonely-id\"\n"
        );
        let problems = parse(&text).expect_err("invalid");
        let expected = [
            "c.toml:8:1: unknown key `colour` in [[aws.instance]]",
            "c.toml:7:27: max_requests_per_second must be a number from 0.01 to 10000, not 0",
            "c.toml:3:10: \"EU-Central-1\" is not an AWS region name",
            "c.toml:5:15: external_id must be 2 to 1224 characters",
            "c.toml:4:12: role_arn \"arn:aws:iam::2222:role/r\" is not a role ARN: the account must be 12 digits",
            "c.toml:6:16: endpoint_url must be an http:// or https:// URL: it must start with http:// or https://",
            "c.toml:11:6: invalid id \"not-a-uuid\"",
            "c.toml:12:15: external_id is sent with AssumeRole: it needs role_arn",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for e in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn one_budget_takes_one_cap() {
        let text = format!(
            "[[aws.instance]]\nid = \"{ID}\"\n\n[[aws.instance]]\nid = \"{OTHER}\"\nmax_requests_per_second = 9.0\n"
        );
        assert_eq!(
            parse(&text).expect_err("invalid"),
            [
                "c.toml:4:1: max_requests_per_second 9 differs from 5 at line 1 for the same account (the base credentials') and region (us-east-1): one budget serves both"
            ]
        );
        // Another region is another budget.
        let text = format!(
            "[[aws.instance]]\nid = \"{ID}\"\n\n[[aws.instance]]\nid = \"{OTHER}\"\nregion = \"eu-west-1\"\nmax_requests_per_second = 9.0\n"
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn a_repeated_id_names_both_lines() {
        let text = format!(
            "[[aws.instance]]\nid = \"{ID}\"\n\n[[aws.instance]]\nid = \"{OTHER}\"\n\n[[aws.instance]]\nid = \"{ID}\"\n"
        );
        assert_eq!(
            parse(&text).expect_err("invalid"),
            [format!(
                "c.toml:7:1: duplicate [[aws.instance]] for instance {ID}: already at line 1 (this is line 7)"
            )]
        );
    }

    #[test]
    fn role_arns_follow_iam_s_syntax() {
        for good in [
            "arn:aws:iam::123456789012:role/flowwatch-reader",
            "arn:aws-us-gov:iam::123456789012:role/path/to/Reader.v2",
            "arn:aws-cn:iam::123456789012:role/a+b=c,d.e@f_g-h",
        ] {
            assert_eq!(role_account(good).as_deref(), Ok("123456789012"), "{good}");
        }
        for bad in [
            "arn:aws:iam::123456789012:user/flowwatch",
            "arn:aws:iam:us-east-1:123456789012:role/r",
            "arn:aws:sts::123456789012:role/r",
            "arn:mars:iam::123456789012:role/r",
            "arn:aws:iam::12345678901x:role/r",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/bad name",
            "role/flowwatch",
        ] {
            assert!(role_account(bad).is_err(), "{bad}");
        }
    }
}
