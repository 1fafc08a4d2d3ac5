// Validates rendered Kubernetes manifests (multi-document YAML files) the way
// kubeconform -strict does, with what npm offers here:
//  1. schema: each object is checked by kubernetes-models' validators, which
//     are the Kubernetes 1.27 OpenAPI schemas compiled by ajv (required
//     fields, types, enums, int32/int64 formats). An apiVersion/kind it does
//     not know is an error, not a skip.
//  2. strict fields: those validators ignore unknown fields, so a misspelt
//     field (`terminationGracePeriodSecond`) would pass and be dropped by the
//     API server. Every field is therefore looked up in the same package's
//     type declarations (generated from the same OpenAPI spec), recursively.
//  3. chatd's own cross-object rules (chatd-rules.mjs).
// Usage: node validate.mjs [--external Kind/name ...] file.yaml...
// Exit 1 with one line per problem; prints a summary line otherwise.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import yaml from "js-yaml";
import { checkChatd } from "./chatd-rules.mjs";

const require = createRequire(import.meta.url);
const MODELS = path.dirname(require.resolve("kubernetes-models/package.json"));
const NODE_MODULES = path.dirname(MODELS);

// ---- type declarations -> field tables ----------------------------------
const ifaceCache = new Map(); // d.ts path -> {fields: Map(name -> type), imports} | null

function parseDts(file) {
  if (ifaceCache.has(file)) return ifaceCache.get(file);
  let src;
  try {
    src = fs.readFileSync(file, "utf8");
  } catch {
    ifaceCache.set(file, null);
    return null;
  }
  const imports = new Map();
  for (const m of src.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g))
    for (const name of m[1].split(",").map((s) => s.trim()))
      imports.set(name, m[2]);
  const start = src.search(/^export interface \w+/m);
  if (start < 0) {
    ifaceCache.set(file, null); // an alias such as IntOrString, Quantity, Time
    return null;
  }
  const body = src.slice(start, src.indexOf("\n}", start));
  const fields = new Map();
  for (const m of body.matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm))
    fields.set(m[1], m[2].replace(/;$/, ""));
  const t = { fields, imports, dir: path.dirname(file) };
  ifaceCache.set(file, t);
  return t;
}

function resolveType(fromTable, typeName) {
  const spec = fromTable.imports.get(typeName);
  if (!spec) return null;
  const base = spec.startsWith(".") ? path.resolve(fromTable.dir, spec) : path.join(NODE_MODULES, spec);
  return parseDts(base + ".d.ts");
}

function strictFields(obj, table, where, errors) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return;
  for (const [k, v] of Object.entries(obj)) {
    const type = table.fields.get(k);
    if (type === undefined) {
      errors.push(`${where}/${k}: unknown field`);
      continue;
    }
    const arr = /^Array<(IIo\w+)>$/.exec(type);
    const ref = /^(IIo\w+)$/.exec(type);
    const name = arr ? arr[1] : ref ? ref[1] : null;
    if (!name) continue; // primitive, enum, or a map of strings
    const sub = resolveType(table, name);
    if (!sub) continue; // alias type (IntOrString, Quantity, Time, ...)
    if (arr && Array.isArray(v)) v.forEach((x, i) => strictFields(x, sub, `${where}/${k}/${i}`, errors));
    else if (!arr) strictFields(v, sub, `${where}/${k}`, errors);
  }
}

// ---- per-object validation ----------------------------------------------
async function modelFor(apiVersion, kind) {
  const dir = path.join(MODELS, apiVersion); // "apps/v1", "v1", "policy/v1", ...
  const dts = path.join(dir, `${kind}.d.ts`);
  if (!/^[\w.\/-]+$/.test(apiVersion) || !/^\w+$/.test(kind) || !fs.existsSync(dts)) return null;
  const mod = await import(`kubernetes-models/${apiVersion}/${kind}`);
  return { Model: mod[kind], table: parseDts(dts) };
}

async function validateObject(obj, where, errors) {
  if (!obj || typeof obj !== "object" || typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
    errors.push(`${where}: not a Kubernetes object (apiVersion/kind missing)`);
    return;
  }
  const id = `${where} ${obj.kind}/${obj.metadata?.name ?? "?"}`;
  const m = await modelFor(obj.apiVersion, obj.kind);
  if (!m || !m.Model || !m.table) {
    errors.push(`${id}: unknown apiVersion/kind ${obj.apiVersion} ${obj.kind} (Kubernetes 1.27 schemas)`);
    return;
  }
  try {
    new m.Model(obj).validate();
  } catch (e) {
    errors.push(`${id}: schema: ${e.message}`);
  }
  const strict = [];
  strictFields(obj, m.table, "", strict);
  for (const s of strict) errors.push(`${id}: ${s}`);
}

// ---- main ------------------------------------------------------------------
const args = process.argv.slice(2);
const external = [];
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--external") external.push(args[++i]);
  else files.push(args[i]);
}
if (files.length === 0) {
  console.error("usage: node validate.mjs [--external Kind/name ...] rendered.yaml...");
  process.exit(2);
}
let total = 0;
let failed = false;
for (const f of files) {
  const errors = [];
  let docs;
  try {
    docs = yaml.loadAll(fs.readFileSync(f, "utf8")).filter((d) => d != null);
  } catch (e) {
    console.error(`${f}: YAML: ${e.message}`);
    failed = true;
    continue;
  }
  if (docs.length === 0) errors.push(`${f}: no objects`);
  for (let i = 0; i < docs.length; i++) await validateObject(docs[i], `${f}#${i}`, errors);
  for (const e of checkChatd(docs, external)) errors.push(`${f}: ${e}`);
  total += docs.length;
  for (const e of errors) console.error(e);
  if (errors.length) failed = true;
  else console.log(`${f}: ${docs.length} objects valid`);
}
if (failed) process.exit(1);
console.log(`k8s-validate: ${total} objects in ${files.length} file(s) valid`);
