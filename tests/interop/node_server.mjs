// The Node server SDK with @openfeature/ofrep-provider, as a service would use it.
// usage: node node_server.mjs <baseUrl> <apiKey> <flag> <user ids, comma-separated>
// prints one JSON array: for each user id, what getBooleanDetails answered.
import { OpenFeature } from "@openfeature/server-sdk";
import { OFREPProvider } from "@openfeature/ofrep-provider";

const [baseUrl, apiKey, flag, users] = process.argv.slice(2);
await OpenFeature.setProviderAndWait(new OFREPProvider({
  baseUrl, headers: [["Authorization", `Bearer ${apiKey}`]], timeoutMs: 5000,
}));
const client = OpenFeature.getClient();
const answers = [];
for (const user of users.split(",")) {
  const details = await client.getBooleanDetails(flag, false, { targetingKey: user });
  answers.push({ user, value: details.value, reason: details.reason, variant: details.variant ?? null,
                 errorCode: details.errorCode ?? null, errorMessage: details.errorMessage ?? null });
}
process.stdout.write(JSON.stringify(answers));
await OpenFeature.close();
