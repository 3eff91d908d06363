import assert from "node:assert/strict";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { OPENAPI_DOCUMENT } from "../../src/admin/openapi.js";

/**
 * Checks a real response of the admin API against the OpenAPI document's
 * schema for its path, method and status, with Ajv (JSON Schema 2020-12,
 * the dialect of OpenAPI 3.1). A status the document does not list for the
 * operation fails too.
 */

// The served document (what clients read) may differ from the module's only through serialisation.
const document = JSON.parse(JSON.stringify(OPENAPI_DOCUMENT)) as typeof OPENAPI_DOCUMENT;
// strict: false: OpenAPI's own words (`examples`, `description` on a $ref) are not Ajv keywords.
const ajv = new Ajv2020({ strict: false, allErrors: true });
(addFormats as unknown as (a: Ajv2020) => void)(ajv);
ajv.addSchema({ ...document, $id: "tollgate-admin" });

type Operation = { responses: Record<string, { content?: Record<string, { schema: unknown }> }> };

/** Every response checked so far, as `METHOD template STATUS` (a test asserts the document's coverage). */
export const checked = new Set<string>();

export function assertMatchesDocument(method: string, template: string, status: number, body: unknown): void {
  const paths = document.paths as Record<string, Record<string, Operation>>;
  const operation = paths[template]?.[method.toLowerCase()];
  assert.ok(operation, `the document has no ${method} ${template}`);
  const response = operation.responses[String(status)];
  assert.ok(response, `the document lists no ${status} for ${method} ${template} (body: ${JSON.stringify(body)})`);
  const pointer = `tollgate-admin#/paths/${template.replace(/~/g, "~0").replace(/\//g, "~1")}/${method.toLowerCase()}/responses/${status}/content/application~1json/schema`;
  const validate = ajv.getSchema(pointer);
  assert.ok(validate, `no schema at ${pointer}`);
  const ok = validate(body);
  assert.ok(ok, `${method} ${template} ${status} does not match the document: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body)}`);
  checked.add(`${method.toUpperCase()} ${template} ${status}`);
}
