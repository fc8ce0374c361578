// Validates Knative Serving resources (JSON documents, one per line on stdin) against Knative's published
// schemas, as the `@kubernetes-models/knative` package generates them from knative.dev/serving's API types.
// Prints one line per document: "ok KIND NAME", or "invalid KIND NAME: REASON"; exits 1 if any is invalid.
import { createInterface } from "node:readline";
import { Service } from "@kubernetes-models/knative/serving.knative.dev/v1/Service";

const kinds = { "serving.knative.dev/v1/Service": Service };
let failed = false;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const document = JSON.parse(line);
  const name = `${document.kind} ${document.metadata?.name}`;
  const Kind = kinds[`${document.apiVersion}/${document.kind}`];
  try {
    if (!Kind) throw new Error(`no schema for ${document.apiVersion} ${document.kind}`);
    new Kind(document).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    failed = true;
    console.log(`invalid ${name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
