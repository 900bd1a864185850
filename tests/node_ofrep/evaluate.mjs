// Evaluate switches through the official OpenFeature Node SDK and its OFREP provider (not written here).
// usage: node evaluate.mjs BASE_URL TOKEN name:type ...   (type: boolean | string | number | object)
// prints one JSON object: {name: {value, reason, variant, errorCode, metadata}}
import { OpenFeature } from "@openfeature/server-sdk";
import { OFREPProvider } from "@openfeature/ofrep-provider";

const [baseUrl, token, ...flags] = process.argv.slice(2);
await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl, headers: [["Authorization", `Bearer ${token}`]] }));
const client = OpenFeature.getClient();
const out = {};
for (const spec of flags) {
  const [name, type] = spec.split(":");
  const get = { boolean: "getBooleanDetails", string: "getStringDetails", number: "getNumberDetails",
                object: "getObjectDetails" }[type];
  const fallback = { boolean: false, string: "<default>", number: -1, object: [] }[type];
  const d = await client[get](name, fallback);
  out[name] = { value: d.value, reason: d.reason, variant: d.variant ?? null, errorCode: d.errorCode ?? null,
                metadata: d.flagMetadata ?? {} };
}
console.log(JSON.stringify(out));
await OpenFeature.close();
