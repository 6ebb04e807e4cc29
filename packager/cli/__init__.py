"""The command lines: `packager` (run the service and its dev stack), `ckanpackager` (the operator's command)
and the replay/audit tool."""
