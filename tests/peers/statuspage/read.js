// Reads a status page's JSON API with the published `statuspage.io` client
// (npm), pointed at BASE_URL, and prints what every call returned as one JSON
// object. Usage: node read.js BASE_URL
'use strict';
const {Statuspage} = require('statuspage.io');

async function main() {
  const base = process.argv[2];
  const page = new Statuspage('clarion-test');
  page.setApiUrl(base);
  const api = page.api;
  const out = {
    Summary: await api.getSummary(),
    Status: await api.getStatus(),
    Components: await api.getComponents(),
    Incidents: await api.incidents.getAll(),
    Unresolved: await api.incidents.getUnresolved(),
    ScheduledMaintenances: await api.scheduledMaintenances.getAll(),
    Upcoming: await api.scheduledMaintenances.getUpcoming(),
    Active: await api.scheduledMaintenances.getActive(),
  };
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(`statuspage.io client failed: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
