{{/* The name of every object the chart creates. */}}
{{- define "switchboard.fullname" -}}
{{- if contains "switchboard" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-switchboard-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change across upgrades. */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: switchboard-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchboard.labels" -}}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Leader election is on whenever two pods could reconcile at once. */}}
{{- define "switchboard.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{- define "switchboard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "switchboard.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) -}}
{{- end -}}

{{/*
What the operator does to an app's namespace, verb by verb; each rule names the code
that needs it (operator/src/controller.rs). tests/tests/chart.rs checks these against
the calls the operator really makes, recorded by the apiserver's audit log.
*/}}
{{- define "switchboard.appRules" -}}
# Watch RealtimeApps; write their status (server-side apply).
- apiGroups: [switchboard.dev]
  resources: [realtimeapps]
  verbs: [list, watch]
- apiGroups: [switchboard.dev]
  resources: [realtimeapps/status]
  verbs: [patch]
# Owned children: watched (a deleted child comes back), applied (server-side apply is
# a patch, authorized as create while the object does not exist yet), and the
# Deployment read for status.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch, create, patch]
# Optional children are also deleted when no longer wanted.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [list, watch, create, patch, delete]
# Secrets named by an app (JWT keys, the TLS pair) are checked to exist, never listed
# or watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on RealtimeApps (a repeated event is patched into a series).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
