{{- define "fedsilo.name" -}}{{ .Release.Name }}-fedsilo{{- end -}}

{{- define "fedsilo.labels" -}}
app.kubernetes.io/name: fedsilo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
{{- end -}}

{{/* Every pod: an unprivileged user, the runtime's seccomp profile. */}}
{{- define "fedsilo.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Every container: read-only root file system, no privilege escalation, no capabilities. */}}
{{- define "fedsilo.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{- define "fedsilo.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}

{{/* Refuse what would turn the protections off. */}}
{{- define "fedsilo.check" -}}
{{- if not (has .Values.role (list "coordinator" "site")) -}}
{{- fail (printf "role must be coordinator or site, not %q" .Values.role) -}}
{{- end -}}
{{- range (concat .Values.coordinator.extraArgs .Values.site.extraArgs) -}}
{{- if or (hasPrefix "--insecure" (toString .)) (hasPrefix "--no-secure-aggregation" (toString .)) (hasPrefix "--allow-unmasked-updates" (toString .)) -}}
{{- fail (printf "extraArgs: %s is refused by this chart (TLS, site keys and SecAgg+ stay on)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
