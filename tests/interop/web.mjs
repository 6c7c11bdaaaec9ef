// A web app on another origin: the OFREP web provider polls rolloutadmin's bulk endpoint.
// web.html?base=<rolloutadmin URL>&key=<client key>&user=<id>&flags=<a,b>&poll=<ms>
// window.__state: ready, values (flag -> value), changes (each ConfigurationChanged's flagsChanged), errors.
import { OpenFeature, ProviderEvents } from "@openfeature/web-sdk";
import { OFREPWebProvider } from "@openfeature/ofrep-web-provider";

const params = new URLSearchParams(location.search);
const flags = params.get("flags").split(",");
const state = { ready: false, values: {}, changes: [], errors: [] };
window.__state = state;
const client = OpenFeature.getClient();

function read() {
  for (const flag of flags) {
    state.values[flag] = client.getBooleanDetails(flag, false).value;
  }
}

OpenFeature.addHandler(ProviderEvents.ConfigurationChanged, (event) => {
  state.changes.push([...(event.flagsChanged ?? [])].sort());
  read();
});
OpenFeature.addHandler(ProviderEvents.Error, (event) => state.errors.push(String(event.message)));

try {
  await OpenFeature.setContext({ targetingKey: params.get("user") });
  await OpenFeature.setProviderAndWait(new OFREPWebProvider({
    baseUrl: params.get("base"), pollInterval: Number(params.get("poll") ?? 500),
    headers: [["Authorization", `Bearer ${params.get("key")}`]],
  }));
  read();
  state.ready = true;
  document.getElementById("status").textContent = "ready";
} catch (error) {
  state.errors.push(String(error));
  document.getElementById("status").textContent = "error";
}
