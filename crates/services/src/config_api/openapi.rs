//! The OpenAPI 3.0 document of the configuration and dial-plan APIs (`GET /openapi.json`),
//! written by hand from the entity types of `switchboard-config`.

use serde_json::{json, Map, Value};
use switchboard_store::Kind;

fn schema_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Skill => "Skill",
        Kind::AgentGroup => "AgentGroup",
        Kind::Dn => "Dn",
        Kind::Agent => "Agent",
        Kind::RoutePoint => "RoutePoint",
        Kind::Trunk => "Trunk",
        Kind::DialRule => "DialRule",
        Kind::Mailbox => "Mailbox",
    }
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": reference("Problem") } }
    })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

fn body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn number() -> Value {
    json!({ "type": "string", "pattern": "^\\+?[0-9*#]{1,32}$",
            "description": "digits, '*' and '#', optional leading '+' (1 to 32)" })
}

fn name() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" })
}

fn schemas() -> Value {
    json!({
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "field": { "type": "string", "description": "the field at fault, relative to the body (`number`, `dids[0].first`) or another entity's (`agents/a1001.dn`)" },
                "errors": { "type": "array", "items": { "type": "object", "properties": {
                    "pointer": { "type": "string", "description": "JSON pointer into the request body" },
                    "detail": { "type": "string" } } } }
            }
        },
        "Tenant": {
            "type": "object", "additionalProperties": false,
            "required": ["name", "domain"],
            "properties": {
                "name": name(),
                "domain": { "type": "string", "description": "SIP domain (realm); unique across tenants" }
            }
        },
        "Skill": {
            "type": "object", "additionalProperties": false, "required": ["name"],
            "properties": { "name": name(), "description": { "type": "string" } }
        },
        "AgentGroup": {
            "type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {
                "name": name(),
                "description": { "type": "string" },
                "after_call_work_s": { "type": "integer", "minimum": 0, "maximum": 3600, "description": "after-call work of the group's agents, seconds (0: straight back to Ready)" }
            }
        },
        "Dn": {
            "type": "object", "additionalProperties": false, "required": ["number", "kind"],
            "properties": {
                "number": number(),
                "kind": { "type": "string", "enum": ["extension", "route_point", "queue", "voicemail_access", "trunk"] },
                "name": { "type": "string" },
                "mailbox": { "type": "string", "nullable": true, "description": "a mailbox of the tenant" },
                "no_answer_timeout_s": { "type": "integer", "minimum": 1, "maximum": 600, "nullable": true },
                "forward_no_answer": { "type": "string", "nullable": true, "description": "where unanswered calls go" },
                "forward_busy": { "type": "string", "nullable": true, "description": "where calls go when the DN is busy" },
                "agent_group": { "type": "string", "nullable": true, "description": "queues only" },
                "trunk": { "type": "string", "nullable": true, "description": "trunk DNs only (required there)" }
            }
        },
        "Agent": {
            "type": "object", "additionalProperties": false, "required": ["login_id"],
            "properties": {
                "login_id": { "type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$" },
                "name": { "type": "string" },
                "dn": { "type": "string", "nullable": true, "description": "an extension of the tenant" },
                "skills": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0, "maximum": 100 },
                            "description": "skill name (declared in skills) to level" },
                "groups": { "type": "array", "items": { "type": "string" }, "description": "agent groups of the tenant" }
            }
        },
        "RoutePoint": {
            "type": "object", "additionalProperties": false, "required": ["number", "strategy_url"],
            "properties": {
                "number": { "type": "string", "description": "a DN of kind route_point" },
                "strategy_url": { "type": "string", "description": "http://, https://, file:// or builtin: URL of an SCXML strategy" },
                "description": { "type": "string" },
                "default_route": { "type": "string", "nullable": true, "description": "where an unrouted call goes after the timeout (a DN or external number)" },
                "timeout_s": { "type": "integer", "minimum": 1, "maximum": 3600, "nullable": true, "description": "seconds a call waits for RouteCall" }
            }
        },
        "DidRange": {
            "type": "object", "additionalProperties": false, "required": ["first", "last"],
            "properties": {
                "first": { "type": "string", "pattern": "^\\+?[0-9]{1,32}$" },
                "last": { "type": "string", "description": "as long as first, not below it" },
                "target": { "type": "string", "nullable": true, "description": "the DN the range reaches; without it the number itself is resolved" }
            }
        },
        "Trunk": {
            "type": "object", "additionalProperties": false, "required": ["name", "addresses"],
            "properties": {
                "name": name(),
                "addresses": { "type": "array", "minItems": 1, "items": { "type": "string", "description": "IP or IP:port" },
                               "description": "calls from these come from the trunk; calls out go to the first" },
                "dids": { "type": "array", "items": reference("DidRange") }
            }
        },
        "Replace": {
            "type": "object", "additionalProperties": false, "required": ["regex", "with"],
            "properties": { "regex": { "type": "string" }, "with": { "type": "string" } }
        },
        "DialRule": {
            "type": "object", "additionalProperties": false, "required": ["name", "priority", "route"],
            "description": "exactly one of exact, prefix, range, regex",
            "properties": {
                "name": name(),
                "priority": { "type": "integer", "minimum": 0, "description": "lowest first, then by name" },
                "applies_to": { "type": "string", "enum": ["any", "internal", "inbound"], "default": "any" },
                "exact": { "type": "string", "nullable": true },
                "prefix": { "type": "string", "nullable": true },
                "range": { "type": "string", "nullable": true, "example": "2000-2999" },
                "regex": { "type": "string", "nullable": true },
                "strip": { "type": "integer", "minimum": 0, "maximum": 32, "default": 0 },
                "replace": { "allOf": [reference("Replace")], "nullable": true },
                "add_prefix": { "type": "string", "default": "" },
                "route": { "type": "string", "enum": ["local", "external"] },
                "trunk": { "type": "string", "nullable": true, "description": "external rules only (required there)" }
            }
        },
        "Mailbox": {
            "type": "object", "additionalProperties": false, "required": ["number", "pin"],
            "description": "exactly one of owner_agent, owner_group; the pin is write-only",
            "properties": {
                "number": { "type": "string", "pattern": "^[0-9]{1,32}$" },
                "owner_agent": { "type": "string", "nullable": true },
                "owner_group": { "type": "string", "nullable": true },
                "pin": { "type": "string", "pattern": "^[0-9]{4,12}$", "writeOnly": true },
                "max_message_s": { "type": "integer", "minimum": 1, "maximum": 3600, "default": 120 },
                "max_messages": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 100 },
                "retention_days": { "type": "integer", "minimum": 1, "maximum": 3650, "default": 30 }
            }
        }
    })
}

fn resolution_schema() -> Value {
    json!({
        "type": "object",
        "required": ["tenant", "called", "scope", "caller_internal", "target", "number"],
        "properties": {
            "tenant": { "type": "string" },
            "called": { "type": "string" },
            "from": { "type": "string" },
            "ingress": { "type": "string", "description": "device, gateway or trunk:NAME" },
            "scope": { "type": "string", "enum": ["internal", "inbound"] },
            "caller_internal": { "type": "boolean" },
            "target": { "type": "string", "enum": ["extension", "route_point", "queue", "voicemail", "external"] },
            "number": { "type": "string", "description": "the DN, or the translated external number" },
            "rule": { "type": "string", "nullable": true },
            "did_trunk": { "type": "string", "nullable": true },
            "trunk": { "type": "string", "nullable": true, "description": "external: the trunk (null: the node's default gateway)" },
            "gateway": { "type": "string", "nullable": true },
            "device": { "type": "object", "properties": {
                "tenant": { "type": "string" },
                "contact": { "type": "string" },
                "dn": reference("Dn"),
                "agent": { "type": "string", "nullable": true },
                "registered": { "type": "array", "description": "live registrations (when the SIP edge runs in the same process)",
                    "items": { "type": "object", "properties": {
                        "contact": { "type": "string" },
                        "expires_in": { "type": "integer" },
                        "source": { "type": "string" } } } } } }
        }
    })
}

fn all_schemas() -> Value {
    let mut s = schemas();
    if let Some(o) = s.as_object_mut() {
        o.insert("Resolution".into(), resolution_schema());
    }
    s
}

/// The messages of a mailbox (served by the voicemail role).
fn voicemail_paths(paths: &mut Map<String, Value>) {
    let params = json!([
        path_param("tenant", "tenant name"),
        path_param("key", "the mailbox's number")
    ]);
    let id = path_param("id", "the message's id");
    let message = json!({ "type": "object", "properties": {
        "id": { "type": "string" },
        "caller": { "type": "string", "nullable": true },
        "conn_id": { "type": "string", "nullable": true },
        "received_ms": { "type": "integer" },
        "duration_ms": { "type": "integer" },
        "state": { "type": "string", "enum": ["new", "saved"] },
        "heard_by": { "type": "array", "items": { "type": "object", "properties": {
            "by": { "type": "string" }, "at_ms": { "type": "integer" } } } },
        "user_data": { "type": "object" } } });
    let with_id = |extra: Value| {
        let mut p = params.as_array().cloned().unwrap_or_default();
        p.push(id.clone());
        let mut v = extra;
        v["parameters"] = Value::Array(p);
        v
    };
    paths.insert(
        "/v1/tenants/{tenant}/mailboxes/{key}/messages".into(),
        json!({
            "parameters": params,
            "get": { "summary": "List a mailbox's messages, oldest first (voicemail role)", "operationId": "listMessages",
                "responses": {
                    "200": ok_json("the messages", json!({ "type": "object", "properties": {
                        "tenant": { "type": "string" }, "mailbox": { "type": "string" },
                        "new": { "type": "integer" }, "saved": { "type": "integer" },
                        "messages": { "type": "array", "items": message } } })),
                    "404": problem("no such tenant or mailbox") } }
        }),
    );
    paths.insert(
        "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}".into(),
        with_id(json!({
            "delete": { "summary": "Delete a message and its audio", "operationId": "deleteMessage",
                "responses": { "204": { "description": "deleted" }, "404": problem("no such tenant, mailbox or message") } }
        })),
    );
    paths.insert(
        "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}/audio".into(),
        with_id(json!({
            "get": { "summary": "The message's audio", "operationId": "getMessageAudio",
                "responses": { "200": { "description": "the recording", "content": { "audio/wav": {} } },
                    "404": problem("no such tenant, mailbox or message") } }
        })),
    );
    paths.insert(
        "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}/read".into(),
        with_id(json!({
            "post": { "summary": "Mark a message as heard (saved)", "operationId": "markMessageRead",
                "responses": { "200": ok_json("the message", message.clone()),
                    "404": problem("no such tenant, mailbox or message") } }
        })),
    );
}

/// The whole document.
pub fn document() -> Value {
    let tenant = path_param("tenant", "tenant name");
    let mut paths = Map::new();
    paths.insert(
        "/v1/tenants".into(),
        json!({
            "get": { "summary": "List tenants", "operationId": "listTenants",
                "responses": { "200": ok_json("the tenants", json!({ "type": "object",
                    "properties": { "tenants": { "type": "array", "items": reference("Tenant") } } })) } },
            "post": { "summary": "Create a tenant", "operationId": "createTenant",
                "requestBody": body(reference("Tenant")),
                "responses": {
                    "201": ok_json("created", reference("Tenant")),
                    "400": problem("malformed JSON"),
                    "409": problem("the tenant or its domain exists"),
                    "422": problem("a value is not valid") } }
        }),
    );
    paths.insert(
        "/v1/tenants/{tenant}".into(),
        json!({
            "parameters": [tenant.clone()],
            "get": { "summary": "Get a tenant", "operationId": "getTenant",
                "responses": { "200": ok_json("the tenant", reference("Tenant")), "404": problem("no such tenant") } },
            "put": { "summary": "Change a tenant's domain", "operationId": "putTenant",
                "requestBody": body(reference("Tenant")),
                "responses": { "200": ok_json("changed", reference("Tenant")), "400": problem("malformed JSON"),
                    "404": problem("no such tenant"), "409": problem("the domain belongs to another tenant"),
                    "422": problem("a value is not valid") } },
            "delete": { "summary": "Delete a tenant and all its entities", "operationId": "deleteTenant",
                "responses": { "204": { "description": "deleted" }, "404": problem("no such tenant") } }
        }),
    );
    for kind in Kind::ALL {
        let seg = kind.path_segment();
        let schema = schema_name(kind);
        let key = path_param(
            "key",
            &format!("the {}'s {}", kind.title(), kind.key_field()),
        );
        paths.insert(
            format!("/v1/tenants/{{tenant}}/{seg}"),
            json!({
                "parameters": [tenant.clone()],
                "get": { "summary": format!("List the tenant's {seg}"), "operationId": format!("list{schema}"),
                    "responses": {
                        "200": ok_json("in creation order", json!({ "type": "object", "properties": {
                            "tenant": { "type": "string" },
                            "items": { "type": "array", "items": reference(schema) } } })),
                        "404": problem("no such tenant") } },
                "post": { "summary": format!("Create a {}", kind.title()), "operationId": format!("create{schema}"),
                    "requestBody": body(reference(schema)),
                    "responses": {
                        "201": ok_json("created", reference(schema)),
                        "400": problem("malformed JSON or a body of the wrong shape"),
                        "404": problem("no such tenant"),
                        "409": problem("it exists already, or clashes with another entity"),
                        "422": problem("a value or a reference is not valid") } }
            }),
        );
        paths.insert(
            format!("/v1/tenants/{{tenant}}/{seg}/{{key}}"),
            json!({
                "parameters": [tenant.clone(), key],
                "get": { "summary": format!("Get a {}", kind.title()), "operationId": format!("get{schema}"),
                    "responses": { "200": ok_json("found", reference(schema)), "404": problem("no such tenant or entity") } },
                "put": { "summary": format!("Replace a {}", kind.title()), "operationId": format!("replace{schema}"),
                    "requestBody": body(reference(schema)),
                    "responses": {
                        "200": ok_json("replaced", reference(schema)),
                        "400": problem("malformed JSON or a body of the wrong shape"),
                        "404": problem("no such tenant or entity"),
                        "409": problem("other entities refer to what would change"),
                        "422": problem("a value or a reference is not valid") } },
                "delete": { "summary": format!("Delete a {}", kind.title()), "operationId": format!("delete{schema}"),
                    "responses": { "204": { "description": "deleted" },
                        "404": problem("no such tenant or entity"),
                        "409": problem("other entities refer to it") } }
            }),
        );
    }
    paths.insert(
        "/v1/tenants/{tenant}/dialplan/resolve".into(),
        json!({
            "parameters": [tenant],
            "get": {
                "summary": "Resolve a number with the tenant's dial plan (served by the dialplan role)",
                "operationId": "resolveNumber",
                "parameters": [
                    { "name": "number", "in": "query", "required": true, "schema": { "type": "string" }, "description": "the called number" },
                    { "name": "from", "in": "query", "required": false, "schema": { "type": "string" }, "description": "the calling number (default: the ingress DN)" },
                    { "name": "ingress", "in": "query", "required": false, "schema": { "type": "string" },
                      "description": "a trunk name or a DN of the tenant, or trunk:NAME, device:DN, device (default), gateway" }
                ],
                "responses": {
                    "200": ok_json("where the call goes", reference("Resolution")),
                    "400": problem("missing number, unknown ingress"),
                    "404": problem("no such tenant"),
                    "422": problem("the number has no route") }
            }
        }),
    );
    voicemail_paths(&mut paths);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Switchboard configuration and dial plan",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Tenants and their contact-center entities (config role), number resolution (dialplan role) and voicemail messages (voicemail role). Errors are application/problem+json (RFC 9457)."
        },
        "paths": Value::Object(paths),
        "components": { "schemas": all_schemas() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema, every collection is there, and it is valid JSON text.
    #[test]
    fn document_is_complete_and_consistent() {
        let doc = document();
        let text = serde_json::to_string(&doc).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["openapi"], "3.0.3");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").expect("local ref");
            assert!(schemas.contains_key(name), "dangling $ref {r}");
        }
        for kind in Kind::ALL {
            let p = format!("/v1/tenants/{{tenant}}/{}/{{key}}", kind.path_segment());
            assert!(doc["paths"][&p]["delete"].is_object(), "{p}");
            assert!(schemas.contains_key(schema_name(kind)));
        }
        assert!(doc["paths"]["/v1/tenants/{tenant}/dialplan/resolve"]["get"].is_object());
        assert!(doc["paths"]["/v1/tenants/{tenant}/mailboxes/{key}/messages"]["get"].is_object());
        assert!(
            doc["paths"]["/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}/read"]["post"]
                .is_object()
        );
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    if k == "$ref" {
                        out.extend(v.as_str().map(str::to_owned));
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
