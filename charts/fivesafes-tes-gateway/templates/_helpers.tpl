{{- define "gateway.fullname" -}}
{{- printf "%s-%s" .Release.Name "gateway" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: fivesafes-tes-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gateway.labels" -}}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fivesafes-tes
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gateway.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* What the chart refuses before rendering anything: the mistakes a schema cannot see. */}}
{{- define "gateway.validate" -}}
{{- if and (eq .Values.database.type "sqlite") (gt (int .Values.replicas) 1) -}}
{{- fail (printf "database.type sqlite allows one replica only (replicas is %d): SQLite is one file on one volume. Use database.type postgresql with database.existingSecret for several replicas." (int .Values.replicas)) -}}
{{- end -}}
{{- if and (eq .Values.database.type "postgresql") (not .Values.database.existingSecret) -}}
{{- fail "database.existingSecret is required with database.type postgresql: the name of a Secret holding the database URL under database.urlKey" -}}
{{- end -}}
{{- range $name, $value := .Values.settings -}}
{{- if or (eq $name "FIVESAFES_DATABASE_URL" "FIVESAFES_METRICS_TOKEN" "FIVESAFES_RESULTS_ACCESS_KEY" "FIVESAFES_RESULTS_SECRET_KEY" "FIVESAFES_WEB_SESSION_KEY" "FIVESAFES_WEB_CLIENT_SECRET") -}}
{{- fail (printf "settings.%s is a secret: give it through its Secret (database.existingSecret, results.credentials.existingSecret, metricsToken.existingSecret), never in values" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The gateway's environment, shared by its pods and the migration Job (which runs before any
     ConfigMap of this release exists, so nothing here comes from one). */}}
{{- define "gateway.env" -}}
- name: FIVESAFES_DATA_DIR
  value: /var/lib/fivesafes-tes
- name: FIVESAFES_PUBLIC_URL
  value: {{ required "publicUrl is required: the base URL clients use to reach the gateway" .Values.publicUrl | quote }}
{{- if eq .Values.database.type "postgresql" }}
- name: FIVESAFES_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- end }}
- name: FIVESAFES_OIDC_ISSUER
  value: {{ required "oidc.issuer is required: the gateway trusts no token without an issuer" .Values.oidc.issuer | quote }}
- name: FIVESAFES_OIDC_AUDIENCE
  value: {{ .Values.oidc.audience | quote }}
- name: FIVESAFES_ROLES_CLAIM
  value: {{ .Values.oidc.rolesClaim | quote }}
{{- with .Values.oidc.jwksUrl }}
- name: FIVESAFES_OIDC_JWKS_URL
  value: {{ . | quote }}
{{- end }}
- name: FIVESAFES_ALLOWED_IMAGES
  value: {{ .Values.allowedImages | toJson | quote }}
{{- with .Values.results.endpointUrl }}
- name: FIVESAFES_RESULTS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: FIVESAFES_RESULTS_BUCKET
  value: {{ .Values.results.bucket | quote }}
- name: FIVESAFES_RESULTS_REGION
  value: {{ .Values.results.region | quote }}
- name: FIVESAFES_RESULTS_ADDRESSING_STYLE
  value: {{ .Values.results.addressingStyle | quote }}
{{- with .Values.results.credentials.existingSecret }}
- name: FIVESAFES_RESULTS_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.results.credentials.accessKeyKey }}
- name: FIVESAFES_RESULTS_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.results.credentials.secretKeyKey }}
{{- end }}
- name: FIVESAFES_DELIVERY_BUCKETS
  value: {{ .Values.results.deliveryBuckets | toJson | quote }}
{{- with .Values.metricsToken.existingSecret }}
- name: FIVESAFES_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.metricsToken.key }}
{{- end }}
{{- range $name, $value := .Values.settings }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Pod Security "restricted", and more: no root, no writable root file system, no capabilities,
     no privilege escalation, the runtime's seccomp profile. Not configurable. */}}
{{- define "gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gateway.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
