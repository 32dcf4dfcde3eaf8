#!/usr/bin/env bash
# Regenerates every generated file that is checked in, the one way to do it:
#
#   crds/realtimeapp.yaml                     `switchboard-operator crd` (the source of truth)
#   charts/switchboard/crds/realtimeapp.yaml  an identical copy, for `helm install`
#   manifests/install.yaml                    `helm template` of the chart, plus its Namespace
#   clients/typescript/examples/<app>/        what `switchboard-server asyncapi` and `codegen typescript` generate
#                                             for each app in manifests/examples
#   server/demo/demo.js                       the demo page's bundle (`npm run build:demo`),
#                                             after the chat module above
#
# Each of these has a drift test that fails naming this script. The tests are also the
# generators: with SWITCHBOARD_UPDATE_GENERATED set they write the file instead of
# comparing it, so what is written is exactly what CI checks. A new generated file gets
# a drift test in the same style and a line here.
set -euo pipefail
cd "$(dirname "$0")/.."

# helm renders the install bundle; it comes from the pinned tool cache.
if ! tools_out=$(bash hack/tools.sh helm); then
  echo "hack/generate.sh: hack/tools.sh helm failed (see above)" >&2
  exit 1
fi
export PATH="${tools_out##*$'\n'}:$PATH"

export SWITCHBOARD_UPDATE_GENERATED=1
cargo test -q -p switchboard-operator --lib crd::tests::checked_in_crds_match_the_generated_one
cargo test -q -p switchboard-tests --test chart the_chart_lints_and_the_install_bundle_is_current
cargo test -q -p switchboard-server --lib codegen::tests::checked_in_example_documents_match_the_generated_ones
npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
npm --prefix clients/typescript run --silent build:demo
git status --short -- crds charts/switchboard/crds manifests/install.yaml clients/typescript/examples server/demo
