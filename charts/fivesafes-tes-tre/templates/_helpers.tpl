{{- define "tre.fullname" -}}
{{- printf "%s-%s" .Release.Name "agent" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tre.selectorLabels" -}}
app.kubernetes.io/name: fivesafes-tes-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tre.labels" -}}
{{ include "tre.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fivesafes-tes
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tre.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The labels the Kubernetes executor puts on every task pod; the deny-all NetworkPolicy selects them. */}}
{{- define "tre.taskPodLabels" -}}
app.kubernetes.io/managed-by: fivesafes-tes
fivesafes-tes/role: task
{{- end -}}

{{/* The labels the Kubernetes executor puts on every stage-out pod; the filer's egress policy selects them. */}}
{{- define "tre.filerPodLabels" -}}
app.kubernetes.io/managed-by: fivesafes-tes
fivesafes-tes/role: filer
{{- end -}}

{{- define "tre.kubernetesBackend" -}}
{{- if eq .Values.executor.backend "kubernetes" }}true{{ end -}}
{{- end -}}

{{/* What the chart refuses before rendering anything: the mistakes a schema cannot see. */}}
{{- define "tre.validate" -}}
{{- if and (eq .Values.database.type "postgresql") (not .Values.database.existingSecret) -}}
{{- fail "database.existingSecret is required with database.type postgresql: the name of a Secret holding the database URL under database.urlKey" -}}
{{- end -}}
{{- if and (eq .Values.database.type "sqlite") (not .Values.persistence.enabled) -}}
{{- fail "database.type sqlite needs persistence.enabled: the agent's database (and its deployment id) would be lost with its pod" -}}
{{- end -}}
{{- if and (eq .Values.executor.backend "docker") (not .Values.executor.docker.host) -}}
{{- fail "executor.backend docker needs executor.docker.host (a Docker engine outside the cluster): the chart never mounts a node's Docker socket" -}}
{{- end -}}
{{- if and (eq .Values.executor.backend "kubernetes") (eq .Values.executor.kubernetes.namespace .Release.Namespace) -}}
{{- fail (printf "executor.kubernetes.namespace must not be the agent's own namespace (%s): tasks run in a namespace of their own, with nothing else in it" .Release.Namespace) -}}
{{- end -}}
{{- range $name, $value := .Values.settings -}}
{{- if or (eq $name "FIVESAFES_AGENT_DATABASE_URL" "FIVESAFES_AGENT_TOKEN" "FIVESAFES_AGENT_TOKEN_FILE" "FIVESAFES_AGENT_AIRLOCK_ACCESS_KEY" "FIVESAFES_AGENT_AIRLOCK_SECRET_KEY" "FIVESAFES_AGENT_WEB_SESSION_KEY" "FIVESAFES_AGENT_WEB_CLIENT_SECRET") -}}
{{- fail (printf "settings.%s is a secret: give it through its Secret (database.existingSecret, gateway.tokenSecret, airlock.credentials.existingSecret, api.web.existingSecret), never in values" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tre.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tre.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
